// Settings: defaults, validation, and the pairing-code normaliser. No chrome.* here.
import { DEFAULT_DENY_LIST } from './rules.js';

export const DEFAULT_PORT = 4017;
export const DEFAULT_DWELL_SECONDS = 30;

export const DEFAULT_SETTINGS = Object.freeze({
  port: DEFAULT_PORT,
  autosave: false, // auto-save is opt-in
  dwellSeconds: DEFAULT_DWELL_SECONDS,
  listMode: 'deny', // 'deny': everything but the deny list; 'allow': only the allow list
  denyList: DEFAULT_DENY_LIST,
  allowList: '',
});

function intIn(value, min, max, fallback) {
  const n = typeof value === 'string' && value.trim() === '' ? NaN : Number(value);
  return Number.isInteger(n) && n >= min && n <= max ? n : fallback;
}

/** Fill in defaults and replace invalid values, so the rest of the code can trust settings. */
export function normalizeSettings(raw) {
  const s = { ...DEFAULT_SETTINGS, ...(raw && typeof raw === 'object' ? raw : {}) };
  return {
    port: intIn(s.port, 1, 65535, DEFAULT_PORT),
    autosave: s.autosave === true,
    dwellSeconds: intIn(s.dwellSeconds, 1, 24 * 3600, DEFAULT_DWELL_SECONDS),
    listMode: s.listMode === 'allow' ? 'allow' : 'deny',
    denyList: typeof s.denyList === 'string' ? s.denyList : DEFAULT_DENY_LIST,
    allowList: typeof s.allowList === 'string' ? s.allowList : '',
  };
}

/** The daemon's base URL for these settings. */
export function daemonBase(settings) {
  return `http://127.0.0.1:${normalizeSettings(settings).port}`;
}

/**
 * What the user typed into the pairing box, as the daemon expects it: trimmed, upper-case,
 * inner spaces removed; an 8-character code typed without its dash gets it back (ABCD2345 ->
 * ABCD-2345). Anything else is passed through for the daemon to judge.
 */
export function normalizePairingCode(input) {
  const s = String(input ?? '').trim().toUpperCase().replace(/\s+/g, '');
  const bare = s.replace(/-/g, '');
  if (/^[A-Z0-9]{8}$/.test(bare)) return `${bare.slice(0, 4)}-${bare.slice(4)}`;
  return s;
}
