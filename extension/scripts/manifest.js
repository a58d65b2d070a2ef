// The two manifests, built from one description. Chrome runs the background as a service
// worker; Firefox MV3 has no service workers for extensions and runs it as an event page
// (background.scripts). Everything else is shared.
import { readFileSync } from 'node:fs';

const pkg = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8'));

export const GECKO_ID = 'satchel@satchel.local';
// data_collection_permissions needs Firefox 140 (desktop) / 142 (Android).
export const FIREFOX_MIN_VERSION = '140.0';
export const FIREFOX_ANDROID_MIN_VERSION = '142.0';

const ICONS = { 16: 'icons/16.png', 32: 'icons/32.png', 48: 'icons/48.png', 128: 'icons/128.png' };

export function manifest(browser) {
  if (browser !== 'chrome' && browser !== 'firefox') throw new Error(`unknown browser ${browser}`);
  const m = {
    manifest_version: 3,
    name: 'Satchel',
    version: pkg.version,
    description: 'Save pages you read to your local Satchel, and search them.',
    icons: ICONS,
    // See README.md for why each one is needed.
    permissions: ['storage', 'contextMenus', 'activeTab', 'scripting', 'alarms'],
    // The daemon's loopback origin; match patterns ignore the port, which is configurable.
    host_permissions: ['http://127.0.0.1/*'],
    background: browser === 'chrome' ? { service_worker: 'background.js' } : { scripts: ['background.js'] },
    action: { default_title: 'Satchel', default_popup: 'popup.html', default_icon: ICONS },
    options_ui: { page: 'options.html', open_in_tab: true },
    commands: {
      'save-page': {
        suggested_key: { default: 'Alt+Shift+S' },
        description: 'Save this page to Satchel',
      },
    },
    // Only for auto-save: the script measures active dwell time and extracts the article.
    // It does nothing on a page unless auto-save is on and the page passes the URL rules.
    content_scripts: [
      {
        matches: ['http://*/*', 'https://*/*'],
        js: ['content.js'],
        run_at: 'document_idle',
      },
    ],
  };
  if (browser === 'chrome') {
    m.minimum_chrome_version = '120';
  } else {
    m.browser_specific_settings = {
      gecko: {
        id: GECKO_ID,
        strict_min_version: FIREFOX_MIN_VERSION,
        // Pages go to a daemon on this computer only: nothing is sent to the developers.
        data_collection_permissions: { required: ['none'] },
      },
      gecko_android: { strict_min_version: FIREFOX_ANDROID_MIN_VERSION },
    };
  }
  return m;
}
