// Options page: pairing, port, auto-save and its URL rules. Settings are written straight to
// storage.local (the background reads them from there on every use); pairing goes through
// the background, which is the only part that talks to the daemon.
import { api, MSG } from './browser.js';
import { parseRules } from './lib/rules.js';
import { DEFAULT_SETTINGS, normalizeSettings } from './lib/settings.js';

const $ = (id) => document.getElementById(id);

function showStatus(text, ok = true) {
  $('status').textContent = text;
  $('status').className = ok ? 'ok' : 'bad';
}

async function load() {
  const { settings: raw } = await api.storage.local.get('settings');
  const s = normalizeSettings(raw);
  $('port').value = s.port;
  $('autosave').checked = s.autosave;
  $('dwell').value = s.dwellSeconds;
  $('mode').value = s.listMode;
  $('denylist').value = s.denyList;
  $('allowlist').value = s.allowList;
}

/** Read the form; returns { settings } or { error }. */
function readForm() {
  const port = Number($('port').value);
  if (!Number.isInteger(port) || port < 1 || port > 65535) return { error: 'The port must be a whole number from 1 to 65535.' };
  const dwell = Number($('dwell').value);
  if (!Number.isInteger(dwell) || dwell < 1 || dwell > 86400) return { error: 'Dwell time must be a whole number of seconds from 1 to 86400.' };
  return {
    settings: normalizeSettings({
      port,
      autosave: $('autosave').checked,
      dwellSeconds: dwell,
      listMode: $('mode').value,
      denyList: $('denylist').value,
      allowList: $('allowlist').value,
    }),
  };
}

async function save() {
  const { settings, error } = readForm();
  if (error) {
    showStatus(error, false);
    return false;
  }
  await api.storage.local.set({ settings });
  let msg = 'Settings saved.';
  if (settings.autosave && settings.listMode === 'allow' && !parseRules(settings.allowList).length) {
    msg += ' Note: the allow list is empty, so nothing will be auto-saved.';
  }
  showStatus(msg);
  return true;
}

async function refreshPairState() {
  try {
    const s = await api.runtime.sendMessage({ type: MSG.status });
    const el = $('pair-state');
    if (!s.reachable) {
      el.textContent = `Daemon not reachable on 127.0.0.1:${s.port}.`;
      el.className = 'bad';
    } else if (s.paired) {
      el.textContent = 'Paired with the daemon.';
      el.className = 'ok';
    } else {
      el.textContent = s.hasToken ? 'Not paired: the daemon refused the saved token. Pair again.' : 'Not paired yet.';
      el.className = 'bad';
    }
  } catch (e) {
    $('pair-state').textContent = `Extension error: ${e.message}`;
  }
}

async function pair() {
  const code = $('code').value.trim();
  if (!code) {
    showStatus('Type the code that `satchel pair` printed.', false);
    return;
  }
  if (!(await save())) return; // pair against the port in the form
  $('pair').disabled = true;
  showStatus('Pairing…');
  try {
    const r = await api.runtime.sendMessage({ type: MSG.pair, code });
    if (r.ok) {
      $('code').value = '';
      showStatus('Paired.');
    } else {
      showStatus(`Pairing failed: ${r.error}`, false);
    }
  } catch (e) {
    showStatus(`Pairing failed: ${e.message}`, false);
  } finally {
    $('pair').disabled = false;
    refreshPairState();
  }
}

async function unpair() {
  await api.runtime.sendMessage({ type: MSG.unpair });
  showStatus('This browser forgot its token. Pair again to save pages.');
  refreshPairState();
}

async function resetDeny() {
  $('denylist').value = DEFAULT_SETTINGS.denyList;
  if (await save()) showStatus('Deny list reset to defaults and saved.');
}

$('save').addEventListener('click', save);
$('pair').addEventListener('click', pair);
$('code').addEventListener('keydown', (ev) => {
  if (ev.key === 'Enter') pair();
});
$('unpair').addEventListener('click', unpair);
$('reset-deny').addEventListener('click', resetDeny);
load().then(refreshPairState);
