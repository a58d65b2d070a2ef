// Content script (http and https pages). It never talks to the daemon: it extracts the page
// when the background asks, and, when auto-save is on for this page, measures how long the
// page is actually looked at and hands the background a capture once that passes the setting.
import { Readability } from '@mozilla/readability';
import { api, MSG } from './browser.js';
import { buildCapture } from './lib/capture.js';
import { DwellTracker } from './lib/dwell.js';
import { dwellReached } from './lib/rules.js';

/** Tidy Readability's textContent: trim lines, no runs of blank lines. */
function tidyText(text) {
  return String(text ?? '')
    .split('\n')
    .map((l) => l.replace(/[ \t\f\v\u00a0]+/g, ' ').trim())
    .join('\n')
    .replace(/\n{3,}/g, '\n\n')
    .trim();
}

/** The page as a capture (already capped at the daemon's 5 MiB limit). */
function extractPage(mode) {
  const base = {
    url: location.href,
    title: document.title,
    lang: document.documentElement.lang || undefined,
    mode,
  };
  if (mode === 'selection') {
    return buildCapture({ ...base, selection: String(window.getSelection() ?? '') }).capture;
  }
  let html;
  let text;
  try {
    // Readability rewrites the document it is given: hand it a copy.
    const article = new Readability(document.cloneNode(true)).parse();
    if (article?.content) {
      html = article.content;
      text = tidyText(article.textContent);
      if (!base.title) base.title = article.title;
    }
  } catch (e) {
    console.debug('Satchel: Readability failed, sending the whole body', e);
  }
  if (!html) {
    // No article found: the whole body; the daemon's own extractor takes it from there.
    const body = document.body ?? document.documentElement;
    html = body.outerHTML;
    text = tidyText(body.innerText ?? body.textContent);
  }
  return buildCapture({ ...base, html, text }).capture;
}

function onMessage(msg, _sender, sendResponse) {
  if (msg?.type === MSG.extract) {
    sendResponse(extractPage(msg.mode === 'selection' ? 'selection' : msg.mode === 'auto' ? 'auto' : 'manual'));
  } else if (msg?.type === MSG.url) {
    sendResponse({ url: location.href });
  }
  return false;
}

/** Auto-save: count visible-and-focused time; at the threshold, send one capture. */
async function startAutoSave() {
  // A random id for this page load: the background auto-saves each load at most once.
  // (crypto.randomUUID exists only in secure contexts, and plain http pages are not.)
  const loadId = Array.from(crypto.getRandomValues(new Uint32Array(4)), (n) => n.toString(36)).join('');
  let reply;
  try {
    reply = await api.runtime.sendMessage({ type: MSG.hello, url: location.href, loadId });
  } catch {
    return; // the extension was reloaded or updated under this page
  }
  if (!reply?.track) return; // auto-save off, or this page is not eligible

  const tracker = new DwellTracker();
  const isActive = () => document.visibilityState === 'visible' && document.hasFocus();
  let done = false;
  let tick = null;

  const stop = () => {
    done = true;
    clearInterval(tick);
    document.removeEventListener('visibilitychange', check);
    window.removeEventListener('focus', check);
    window.removeEventListener('blur', check);
  };

  function check() {
    if (done) return;
    tracker.update(isActive());
    if (!dwellReached(tracker.activeMs(), reply.dwellSeconds)) return;
    stop();
    api.runtime
      .sendMessage({ type: MSG.autosave, loadId, capture: extractPage('auto') })
      .catch(() => {});
  }

  document.addEventListener('visibilitychange', check);
  window.addEventListener('focus', check);
  window.addEventListener('blur', check);
  // Focus moving into an iframe fires no event we can see reliably, and timers are throttled
  // in hidden tabs anyway: a once-a-second tick keeps the count honest and fires on time.
  tick = setInterval(check, 1000);
  check();
}

// For the background's fallback (scripting.executeScript): always the newest copy's extractor.
globalThis.__satchelExtract = extractPage;

// The background injects this file into tabs opened before the extension was installed, so it
// can run twice in a page: set up once. A copy left behind by an extension update or reload is
// cut off from the extension (Chrome clears its runtime.id) and does not count.
const previous = globalThis.__satchelContent;
if (!previous?.alive()) {
  globalThis.__satchelContent = { alive: () => Boolean(api.runtime?.id) };
  api.runtime.onMessage.addListener(onMessage);
  startAutoSave();
}
