import { test } from 'node:test';
import assert from 'node:assert/strict';
import { manifest } from '../scripts/manifest.js';

for (const browser of ['chrome', 'firefox']) {
  test(`${browser} manifest: MV3, loopback the only host permission, no "tabs"`, () => {
    const m = manifest(browser);
    assert.equal(m.manifest_version, 3);
    assert.deepEqual(m.host_permissions, ['http://127.0.0.1/*']);
    assert.deepEqual([...m.permissions].sort(), ['activeTab', 'alarms', 'contextMenus', 'scripting', 'storage']);
    assert.equal(m.optional_permissions, undefined);
    assert.deepEqual(m.content_scripts[0].matches, ['http://*/*', 'https://*/*']);
    assert.equal(m.action.default_popup, 'popup.html');
    assert.deepEqual(m.commands['save-page'].suggested_key, { default: 'Alt+Shift+S' });
  });
}

test('background: a service worker for Chrome, an event page for Firefox', () => {
  assert.deepEqual(manifest('chrome').background, { service_worker: 'background.js' });
  const ff = manifest('firefox');
  assert.deepEqual(ff.background, { scripts: ['background.js'] });
  assert.equal(ff.browser_specific_settings.gecko.id, 'satchel@satchel.local');
  assert.ok(Number.parseFloat(ff.browser_specific_settings.gecko.strict_min_version) >= 121);
  assert.equal(manifest('chrome').browser_specific_settings, undefined);
});
