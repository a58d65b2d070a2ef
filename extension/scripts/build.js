// npm run build: bundle the scripts, write a manifest per browser, draw the icons, zip.
//   dist/chrome/   dist/firefox/   (load these unpacked)
//   dist/satchel-chrome.zip   dist/satchel-firefox.zip
import { build } from 'esbuild';
import { copyFileSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { manifest } from './manifest.js';
import { satchelIcon } from './png.js';
import { zipDirectory } from './zip.js';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const src = join(root, 'src');
const dist = join(root, 'dist');

const ENTRIES = ['background', 'content', 'popup', 'options'];
const STATIC = ['popup.html', 'options.html', 'ui.css'];
const ICON_SIZES = [16, 32, 48, 128];

rmSync(dist, { recursive: true, force: true });

for (const browser of ['chrome', 'firefox']) {
  const out = join(dist, browser);
  mkdirSync(join(out, 'icons'), { recursive: true });
  // Every script is one self-contained classic script (IIFE): content scripts cannot be
  // modules, and a classic script runs both as Chrome's service worker and Firefox's event
  // page. Not minified, so reviewers can read what ships.
  await build({
    entryPoints: Object.fromEntries(ENTRIES.map((e) => [e, join(src, `${e}.js`)])),
    outdir: out,
    bundle: true,
    format: 'iife',
    target: browser === 'chrome' ? 'chrome120' : 'firefox140',
    legalComments: 'inline',
    charset: 'utf8',
    logLevel: 'warning',
  });
  for (const f of STATIC) copyFileSync(join(src, f), join(out, f));
  for (const size of ICON_SIZES) writeFileSync(join(out, 'icons', `${size}.png`), satchelIcon(size));
  writeFileSync(join(out, 'manifest.json'), JSON.stringify(manifest(browser), null, 2) + '\n');
  const n = zipDirectory(out, join(dist, `satchel-${browser}.zip`));
  console.log(`dist/${browser}/ and dist/satchel-${browser}.zip (${n} files)`);
}
