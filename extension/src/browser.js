// The extension API namespace. Firefox has `browser` (promise-based); Chrome MV3's `chrome`
// returns promises too, so no polyfill is needed.
export const api = globalThis.browser ?? globalThis.chrome;

/** Message types, shared by the background and the pages that talk to it. */
export const MSG = Object.freeze({
  // from content scripts
  hello: 'satchel:hello', // page loaded: should it track dwell time for auto-save?
  autosave: 'satchel:autosave', // dwell reached: here is the capture
  // to content scripts
  extract: 'satchel:extract',
  url: 'satchel:url',
  // from the popup and options pages
  status: 'satchel:status',
  saveTab: 'satchel:save-tab',
  search: 'satchel:search',
  pair: 'satchel:pair',
  unpair: 'satchel:unpair',
  flush: 'satchel:flush',
  clearNotices: 'satchel:clear-notices',
});
