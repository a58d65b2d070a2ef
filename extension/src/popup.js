// Popup: daemon state, queue, "Save this page", and search. Everything goes through the
// background, which is the only part that talks to the daemon.
import { api, MSG } from './browser.js';
import { isHttpUrl } from './lib/rules.js';

const $ = (id) => document.getElementById(id);
const send = (msg) => api.runtime.sendMessage(msg);

function setText(el, text, cls = 'muted') {
  el.textContent = text;
  el.className = cls;
}

function plural(n, one, many = `${one}s`) {
  return `${n} ${n === 1 ? one : many}`;
}

async function refresh() {
  let s;
  try {
    s = await send({ type: MSG.status });
  } catch (e) {
    setText($('state'), `Extension error: ${e.message}`, 'bad');
    return;
  }
  if (!s.reachable) {
    setText($('state'), `Daemon not reachable on 127.0.0.1:${s.port}. Is Satchel running?`, 'bad');
  } else if (!s.paired) {
    setText($('state'), s.hasToken ? 'Daemon running, but not paired (token refused). Pair again in Options.' : 'Daemon running, not paired. Pair in Options.', 'bad');
  } else {
    setText($('state'), `Connected and paired (port ${s.port})${s.autosave ? ', auto-save on' : ''}.`, 'ok');
  }

  const q = s.queue;
  let queued = q.count ? `${plural(q.count, 'capture')} waiting to be sent` : 'No captures waiting.';
  if (q.count && s.nextRetryAt) {
    const secs = Math.max(0, Math.round((s.nextRetryAt - Date.now()) / 1000));
    queued += secs ? ` (next try in ${secs} s)` : '';
  }
  setText($('queued'), queued);

  const notices = $('notices');
  notices.replaceChildren();
  if (q.droppedFull) {
    const p = document.createElement('div');
    p.className = 'bad';
    p.textContent = `The queue was full: ${plural(q.droppedFull, 'older capture')} dropped.`;
    notices.append(p);
  }
  for (const e of q.errors.slice(0, 3)) {
    const p = document.createElement('div');
    p.className = 'bad';
    p.textContent = `Refused (${e.status}): ${e.error} — ${e.url}`;
    notices.append(p);
  }
  if (notices.childElementCount) {
    const clear = document.createElement('button');
    clear.type = 'button';
    clear.textContent = 'Dismiss';
    clear.addEventListener('click', async () => {
      await send({ type: MSG.clearNotices });
      refresh();
    });
    notices.append(clear);
  }
}

/** The tab to save: ?tabId=N when given (tests open the popup as a page), else the active tab. */
async function targetTabId() {
  const fromQuery = Number(new URLSearchParams(location.search).get('tabId'));
  if (Number.isInteger(fromQuery) && fromQuery >= 0) return fromQuery;
  const [tab] = await api.tabs.query({ active: true, currentWindow: true });
  return tab?.id ?? null;
}

async function savePage() {
  const btn = $('save-page');
  btn.disabled = true;
  setText($('save-result'), 'Saving…');
  try {
    const tabId = await targetTabId();
    if (tabId == null) throw new Error('no active tab');
    const r = await send({ type: MSG.saveTab, tabId, mode: 'manual' });
    if (r.status === 'saved') setText($('save-result'), 'Saved.', 'ok');
    else if (r.status === 'queued') {
      let text = `Queued: ${r.reason}. It will be sent when the daemon is back${r.reason === 'not paired' ? ' and paired' : ''}.`;
      if (r.dropped) text += ` The queue was full: ${plural(r.dropped, 'older capture')} dropped.`;
      setText($('save-result'), text, 'bad');
    } else setText($('save-result'), `Not saved: ${r.error ?? r.reason ?? 'unknown error'}`, 'bad');
  } catch (e) {
    setText($('save-result'), `Not saved: ${e.message}`, 'bad');
  } finally {
    btn.disabled = false;
    refresh();
  }
}

function renderResults(results) {
  const list = $('results');
  list.replaceChildren();
  for (const r of results) {
    const li = document.createElement('li');
    const score = document.createElement('span');
    score.className = 'score';
    score.textContent = typeof r.score === 'number' ? r.score.toFixed(3) : '';
    const title = r.title || r.url || r.source_id || 'Untitled';
    let head;
    if (typeof r.url === 'string' && isHttpUrl(r.url)) {
      head = document.createElement('a');
      head.href = r.url;
      head.title = r.url;
      head.addEventListener('click', (ev) => {
        ev.preventDefault();
        api.tabs.create({ url: r.url });
      });
    } else {
      head = document.createElement('span'); // not a web page: nothing a browser tab can open
    }
    head.textContent = title;
    const snippet = document.createElement('p');
    snippet.className = 'snippet muted';
    const text = String(r.text_chunk ?? r.text ?? '').replace(/\s+/g, ' ').trim();
    snippet.textContent = text.length > 220 ? `${text.slice(0, 220)}…` : text;
    li.append(score, head, snippet);
    list.append(li);
  }
}

async function runSearch(ev) {
  ev?.preventDefault();
  const query = $('query').value.trim();
  if (!query) return;
  setText($('search-status'), 'Searching…');
  try {
    const r = await send({ type: MSG.search, query });
    if (!r.ok) {
      setText($('search-status'), r.error, 'bad');
      renderResults([]);
      return;
    }
    setText($('search-status'), r.results.length ? '' : 'Nothing found.');
    renderResults(r.results);
  } catch (e) {
    setText($('search-status'), e.message, 'bad');
  }
}

$('save-page').addEventListener('click', savePage);
$('search-form').addEventListener('submit', runSearch);
$('open-options').addEventListener('click', (ev) => {
  ev.preventDefault();
  api.runtime.openOptionsPage();
});
refresh();
