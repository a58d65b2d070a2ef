// Background: Chrome's service worker / Firefox's event page. The only part of the extension
// that talks to the daemon. It may be stopped whenever it is idle, so nothing that matters is
// kept only in memory: settings, token, queue and backoff live in storage.local.
import { api, MSG } from './browser.js';
import { nextBackoff, retryDue } from './lib/backoff.js';
import { buildCapture } from './lib/capture.js';
import { DaemonClient } from './lib/client.js';
import { CaptureQueue } from './lib/queue.js';
import { autoSaveEligibility, isDenied, isHttpUrl } from './lib/rules.js';
import { daemonBase, normalizePairingCode, normalizeSettings } from './lib/settings.js';

const storage = api.storage.local;
const queue = new CaptureQueue(storage);
const RETRY_ALARM = 'satchel-retry';
// Chrome fires alarms no sooner than 30 s after they are set (packed extensions); shorter
// backoff steps also get a timer, which works as long as the worker stays up.
const ALARM_MIN_MS = 30_000;

// ---------------------------------------------------------------------------------------------
// Settings, token, daemon client

async function getSettings() {
  const { settings } = await storage.get('settings');
  return normalizeSettings(settings);
}

async function setSettings(patch) {
  const settings = normalizeSettings({ ...(await getSettings()), ...patch });
  await storage.set({ settings });
  return settings;
}

async function getToken() {
  const { token } = await storage.get('token');
  return typeof token === 'string' && token ? token : null;
}

async function client() {
  const [settings, token, { daemonKey }] = await Promise.all([
    getSettings(),
    getToken(),
    storage.get('daemonKey'),
  ]);
  return new DaemonClient({ base: daemonBase(settings), token, key: daemonKey });
}

// ---------------------------------------------------------------------------------------------
// Badge: "✓" when the daemon has the page, "…" when the save is queued, "!" when refused.

const BADGES = {
  saved: { text: '✓', color: '#1f7a4d', title: 'Satchel: saved' },
  queued: { text: '…', color: '#b7791f', title: 'Satchel: save queued (daemon not reachable or not paired)' },
  error: { text: '!', color: '#c53030', title: 'Satchel: the daemon refused this page' },
};

async function setBadge(tabId, kind) {
  if (tabId == null || tabId < 0) return;
  const b = BADGES[kind];
  try {
    await api.action.setBadgeText({ tabId, text: b ? b.text : '' });
    await api.action.setTitle({ tabId, title: b ? b.title : 'Satchel' });
    if (b) await api.action.setBadgeBackgroundColor({ tabId, color: b.color });
  } catch {
    // The tab was closed meanwhile.
  }
}

// The daemon indexes a page after answering 202, so /pages/state may still say "not saved"
// for a moment: remember recent saves (normalised URL -> time) so the badge does not flicker.
const recentSaves = new Map();
const RECENT_MS = 5 * 60_000;

function markSaved(url) {
  if (url) recentSaves.set(url, Date.now());
}

function savedRecently(url) {
  const at = recentSaves.get(url);
  return at !== undefined && Date.now() - at < RECENT_MS;
}

/**
 * The tab's URL. Without the "tabs" permission, tab.url is only filled in where the extension
 * has host access; otherwise ask our content script (present on http(s) pages).
 */
async function tabUrl(tab) {
  if (tab.url) return tab.url;
  try {
    const r = await api.tabs.sendMessage(tab.id, { type: MSG.url });
    return typeof r?.url === 'string' ? r.url : null;
  } catch {
    return null; // no content script: not an http(s) page, or one we may not touch
  }
}

/**
 * Ask the daemon whether the tab's page is saved and show it on the badge. knownUrl: the
 * page's URL when the caller has it (a content script's message), saving a round trip.
 */
async function refreshBadge(tabId, knownUrl) {
  let tab;
  try {
    tab = await api.tabs.get(tabId);
  } catch {
    return null;
  }
  const url = knownUrl ?? (await tabUrl(tab));
  // Pages on the deny list are not even looked up: the daemon hears nothing of them.
  if (!url || !isHttpUrl(url) || tab.incognito || isDenied(url, await getSettings())) {
    await setBadge(tabId, null);
    return null;
  }
  const c = await client();
  if (!c.token) return null;
  const r = await c.pageState(url);
  if (!r.ok) return null; // daemon down or unpaired: leave the badge as it is
  // "queued": accepted and waiting to be indexed, which is as good as saved for the badge.
  const saved = r.body?.saved === true || r.body?.queued === true || savedRecently(r.body?.url ?? url);
  await setBadge(tabId, saved ? 'saved' : null);
  kickQueue();
  return { url: r.body?.url ?? url, saved, saved_at: r.body?.saved_at ?? null };
}

// ---------------------------------------------------------------------------------------------
// Sending captures, the offline queue and its backoff

async function getBackoff() {
  const { backoff } = await storage.get('backoff');
  return backoff ?? null;
}

/** One more failure: advance the backoff unless a retry is already scheduled, and arm it. */
async function noteFailure() {
  const now = Date.now();
  let state = await getBackoff();
  if (retryDue(state, now)) {
    state = nextBackoff(state, now);
    await storage.set({ backoff: state });
  }
  armRetry(state.nextAt);
  return state;
}

let retryTimer = null;

function armRetry(at) {
  const delay = Math.max(0, at - Date.now());
  api.alarms.create(RETRY_ALARM, { when: Date.now() + Math.max(delay, ALARM_MIN_MS) });
  clearTimeout(retryTimer);
  if (delay < ALARM_MIN_MS) retryTimer = setTimeout(() => flushQueue(), delay);
}

async function resetBackoff() {
  clearTimeout(retryTimer);
  retryTimer = null;
  await storage.set({ backoff: null });
  await api.alarms.clear(RETRY_ALARM);
}

/**
 * Send one capture now; keep it in the queue if the daemon cannot take it yet.
 * Returns { status: 'saved' | 'queued' | 'refused', ... }.
 */
async function sendCapture(capture, tabId) {
  const c = await client();
  let r = await c.savePage(capture);
  if (r.status === 413 && capture.html) {
    // The daemon counts size its own way: try once more with text only.
    const { html: _html, ...textOnly } = capture;
    capture = textOnly;
    r = await c.savePage(capture);
  }
  if (r.outcome === 'done') {
    markSaved(r.body?.url ?? capture.url);
    await setBadge(tabId, 'saved');
    kickQueue();
    return { status: 'saved', job: r.body?.job ?? null, url: r.body?.url ?? capture.url };
  }
  if (r.outcome === 'drop') {
    await queue.recordError({ url: capture.url, status: r.status, error: r.error });
    await setBadge(tabId, 'error');
    return { status: 'refused', httpStatus: r.status, error: r.error };
  }
  // 'unpaired' or 'retry': keep it for later.
  const { dropped } = await queue.add(capture, { error: r.error });
  await setBadge(tabId, 'queued');
  await noteFailure();
  return {
    status: 'queued',
    reason: r.outcome === 'unpaired' ? 'not paired' : r.status === 0 ? 'daemon not reachable' : `daemon unavailable (HTTP ${r.status})`,
    httpStatus: r.status,
    error: r.error,
    dropped,
  };
}

let flushing = null;

/** Send every queued capture, oldest first. Only one flush runs at a time. */
function flushQueue() {
  flushing ??= doFlush().finally(() => {
    flushing = null;
  });
  return flushing;
}

async function doFlush() {
  const c = await client();
  let sent = 0;
  let refused = 0;
  // Captures queued while a pass runs are picked up by the next pass.
  for (let pass = 0; pass < 3; pass++) {
    const items = await queue.list();
    if (!items.length) break;
    for (const it of items) {
      const r = await c.savePage(it.capture);
      if (r.outcome === 'done') {
        await queue.remove(it.id);
        markSaved(r.body?.url ?? it.capture.url);
        sent++;
      } else if (r.outcome === 'drop') {
        await queue.remove(it.id);
        await queue.recordError({ url: it.capture.url, status: r.status, error: r.error });
        refused++;
      } else {
        await queue.noteAttempt(it.id, r.error);
        const backoff = await noteFailure();
        const left = (await queue.list()).length;
        return { sent, refused, left, error: r.error, reason: r.outcome, nextAt: backoff.nextAt };
      }
    }
  }
  const left = (await queue.list()).length;
  if (left === 0) await resetBackoff();
  return { sent, refused, left };
}

/** After any successful request: the daemon is up, so send what is waiting (in background). */
function kickQueue() {
  if (flushing) return;
  queue.list().then((items) => {
    if (items.length) flushQueue();
  });
}

// ---------------------------------------------------------------------------------------------
// Saving a tab (toolbar popup, shortcut, context menu, and the e2e tests)

/** Ask the content script for the page; inject it first if the tab predates the extension. */
async function extract(tabId, mode) {
  const msg = { type: MSG.extract, mode };
  try {
    const r = await api.tabs.sendMessage(tabId, msg);
    if (r) return r;
  } catch {
    // No content script in this tab yet.
  }
  try {
    // Inject, then call the extractor the script leaves behind directly (not by message: a
    // copy orphaned by an extension update may still be sitting in the page).
    const target = { tabId };
    await api.scripting.executeScript({ target, files: ['content.js'] });
    const [res] = await api.scripting.executeScript({
      target,
      func: (m) => globalThis.__satchelExtract?.(m) ?? null,
      args: [mode],
    });
    return res?.result ?? null;
  } catch {
    return null; // a page the browser does not let extensions script
  }
}

/**
 * Save the page in a tab. mode: 'manual' (whole page) or 'selection' (the selected text;
 * opts.selectionText, from the context menu, is used if the page gives none).
 */
async function saveTab(tabId, mode = 'manual', opts = {}) {
  if (mode !== 'manual' && mode !== 'selection') throw new Error(`saveTab: mode must be manual or selection`);
  let tab;
  try {
    tab = await api.tabs.get(tabId);
  } catch {
    return { status: 'refused', error: 'no such tab' };
  }
  // Never from a private window, whatever the user allowed the extension: nothing of it may
  // reach the daemon, or the queue on disk while the daemon is down.
  if (tab.incognito) {
    return { status: 'refused', error: 'Satchel never saves pages from private windows.' };
  }
  const page = await extract(tabId, mode);
  const url = page?.url ?? tab.url;
  if (!url || !isHttpUrl(url)) {
    return { status: 'refused', error: 'Only http and https pages can be saved.' };
  }
  const fields = {
    url,
    title: page?.title || tab.title || url,
    lang: page?.lang,
    mode,
  };
  if (mode === 'selection') {
    fields.selection = page?.selection || opts.selectionText || '';
    if (!fields.selection.trim()) return { status: 'refused', error: 'Nothing is selected.' };
  } else {
    // The daemon needs the page's HTML or text; without a content script there is neither.
    if (!page?.html && !page?.text) {
      return { status: 'refused', error: 'The browser does not let extensions read this page.' };
    }
    fields.html = page.html;
    fields.text = page.text;
  }
  const { capture } = buildCapture(fields);
  return sendCapture(capture, tabId);
}

async function activeTab() {
  const [tab] = await api.tabs.query({ active: true, lastFocusedWindow: true });
  return tab ?? null;
}

// ---------------------------------------------------------------------------------------------
// Auto-save (requested by the content script once the page has been looked at long enough)

// Loads already auto-saved, "tabId|loadId": a page is auto-saved at most once per load.
const autoSaved = new Set();

async function autoSaveCheck(sender, url) {
  const settings = await getSettings();
  const tab = sender.tab;
  if (!tab) return { ok: false, reason: 'not-a-tab' };
  // Check both the URL the page reports and the one the browser says the sender has.
  for (const u of new Set([url, sender.url ?? url])) {
    const verdict = autoSaveEligibility({ url: u, incognito: tab.incognito, settings });
    if (!verdict.ok) return verdict;
  }
  return { ok: true, dwellSeconds: settings.dwellSeconds };
}

async function onHello(msg, sender) {
  // Every http(s) page load says hello once its content script runs: the moment to show
  // whether it is saved (tabs.onUpdated may fire before the content script can answer).
  if (sender.frameId === 0 || sender.frameId === undefined) refreshBadge(sender.tab.id, sender.url ?? msg.url);
  const verdict = await autoSaveCheck(sender, msg.url);
  return verdict.ok ? { track: true, dwellSeconds: verdict.dwellSeconds } : { track: false, reason: verdict.reason };
}

async function onAutoSave(msg, sender) {
  const c = msg.capture ?? {};
  const verdict = await autoSaveCheck(sender, c.url);
  if (!verdict.ok) return { status: 'refused', reason: verdict.reason };
  const key = `${sender.tab.id}|${msg.loadId}`;
  if (autoSaved.has(key)) return { status: 'refused', reason: 'already auto-saved' };
  autoSaved.add(key);
  // Rebuild the capture: never trust a page-side object to be well-formed or within the cap.
  const { capture } = buildCapture({
    url: c.url,
    title: c.title,
    html: c.html,
    text: c.text,
    lang: c.lang,
    mode: 'auto',
  });
  return sendCapture(capture, sender.tab.id);
}

// ---------------------------------------------------------------------------------------------
// Popup and options page

async function status() {
  const [c, stats, settings] = await Promise.all([client(), queue.stats(), getSettings()]);
  const h = await c.health();
  if (h.reachable && h.paired && stats.count) kickQueue();
  const backoff = await getBackoff();
  return {
    reachable: h.reachable,
    paired: h.paired,
    hasToken: Boolean(c.token),
    port: settings.port,
    autosave: settings.autosave,
    queue: stats,
    nextRetryAt: stats.count ? (backoff?.nextAt ?? null) : null,
  };
}

async function pair(input) {
  const code = normalizePairingCode(input);
  if (!code) return { ok: false, error: 'Type the code that `satchel pair` printed.' };
  const [c, settings] = await Promise.all([client(), getSettings()]);
  const r = await c.pair(code);
  if (r.ok && typeof r.body?.token === 'string' && r.body.token) {
    await storage.set({ token: r.body.token, daemonKey: r.body.daemon_key ?? null });
    flushQueue();
    activeTab().then((t) => t && refreshBadge(t.id));
    return { ok: true, origin: r.body.origin ?? null };
  }
  if (r.status === 0) {
    return { ok: false, error: `The Satchel daemon is not reachable on 127.0.0.1:${settings.port}. Is it running?` };
  }
  if (r.ok) return { ok: false, error: 'The daemon answered without a token.' };
  return { ok: false, status: r.status, error: r.error };
}

async function unpair() {
  await storage.remove(['token', 'daemonKey']);
  return { ok: true };
}

async function search(query) {
  const q = String(query ?? '').trim();
  if (!q) return { ok: true, results: [] };
  const c = await client();
  if (!c.token) return { ok: false, error: 'Not paired: pair this browser in the options page first.' };
  const r = await c.search(q, 10);
  if (r.ok) {
    kickQueue();
    return { ok: true, results: Array.isArray(r.body?.results) ? r.body.results : [] };
  }
  if (r.outcome === 'unpaired') return { ok: false, error: 'Not paired: pair this browser in the options page.' };
  return { ok: false, error: r.error };
}

// ---------------------------------------------------------------------------------------------
// Event wiring. Listeners are registered synchronously at top level, as MV3 requires.

const extensionOrigin = api.runtime.getURL('');

/** Messages from our own pages (popup, options), not from content scripts in web pages. */
function fromExtensionPage(sender) {
  return sender.id === api.runtime.id && typeof sender.url === 'string' && sender.url.startsWith(extensionOrigin);
}

const handlers = {
  [MSG.hello]: { page: true, fn: onHello },
  [MSG.autosave]: { page: true, fn: onAutoSave },
  [MSG.status]: { fn: () => status() },
  [MSG.saveTab]: { fn: (m) => saveTab(Number(m.tabId), m.mode ?? 'manual') },
  [MSG.search]: { fn: (m) => search(m.query) },
  [MSG.pair]: { fn: (m) => pair(m.code) },
  [MSG.unpair]: { fn: () => unpair() },
  [MSG.flush]: { fn: () => flushQueue() },
  [MSG.clearNotices]: { fn: () => queue.clearNotices().then(() => ({ ok: true })) },
};

api.runtime.onMessage.addListener((msg, sender, sendResponse) => {
  const h = handlers[msg?.type];
  if (!h || sender.id !== api.runtime.id) return false;
  if (h.page ? !sender.tab : !fromExtensionPage(sender)) return false;
  Promise.resolve()
    .then(() => h.fn(msg, sender))
    .then(sendResponse, (e) => sendResponse({ ok: false, status: 'error', error: String(e?.message ?? e) }));
  return true; // the answer comes asynchronously
});

async function createMenus() {
  // create() reports errors through a callback, not a promise; reading lastError there keeps
  // Chrome from logging "Unchecked runtime.lastError".
  const ignore = () => void api.runtime.lastError;
  await api.contextMenus.removeAll();
  api.contextMenus.create(
    { id: 'save-selection', title: 'Save selection to Satchel', contexts: ['selection'] },
    ignore,
  );
  api.contextMenus.create({ id: 'save-page', title: 'Save page to Satchel', contexts: ['page'] }, ignore);
}

api.contextMenus.onClicked.addListener((info, tab) => {
  if (!tab || tab.id == null || tab.id < 0) return;
  if (info.menuItemId === 'save-selection') saveTab(tab.id, 'selection', { selectionText: info.selectionText });
  else if (info.menuItemId === 'save-page') saveTab(tab.id, 'manual');
});

api.commands.onCommand.addListener(async (command, tab) => {
  if (command !== 'save-page') return;
  const t = tab?.id != null ? tab : await activeTab();
  if (t) saveTab(t.id, 'manual');
});

api.tabs.onActivated.addListener(({ tabId }) => {
  refreshBadge(tabId);
});

api.tabs.onUpdated.addListener((tabId, changeInfo, tab) => {
  // Only where the browser tells us the URL; elsewhere the content script's hello does it.
  if (changeInfo.status === 'complete' && tab.active && tab.url) refreshBadge(tabId, tab.url);
});

api.tabs.onRemoved.addListener((tabId) => {
  for (const key of autoSaved) if (key.startsWith(`${tabId}|`)) autoSaved.delete(key);
});

api.alarms.onAlarm.addListener((alarm) => {
  if (alarm.name === RETRY_ALARM) flushQueue();
});

api.runtime.onInstalled.addListener(() => {
  createMenus();
  flushQueue();
});

api.runtime.onStartup.addListener(() => {
  createMenus(); // Firefox does not keep an event page's menus across restarts
  flushQueue();
});

// Each time the worker (re)starts: retry queued captures if their retry time has passed
// (an alarm missed while the browser was closed, say).
getBackoff().then((b) => {
  if (retryDue(b, Date.now())) kickQueue();
});

// For end-to-end tests (worker.evaluate) and the curious: the same functions the UI calls.
globalThis.satchel = {
  saveTab,
  flushQueue,
  settings: getSettings,
  setSettings,
  status,
  pair,
  unpair,
  search,
  refreshBadge,
  queue: () => queue.list(),
  queueStats: () => queue.stats(),
  autoSaveEligibility: async (url, incognito = false) =>
    autoSaveEligibility({ url, incognito, settings: await getSettings() }),
};
