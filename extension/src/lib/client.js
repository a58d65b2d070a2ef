// The daemon's HTTP API, as seen from the extension's background script.
// fetch is injected so Node tests can fake the daemon.

/**
 * What to do with a capture after the daemon answered `status` (0 = no answer at all):
 *   'done'     2xx: saved (202 accepted)
 *   'unpaired' 401/403: no valid token for this origin; keep the capture until paired
 *   'retry'    network error, timeout, 404, 405, 408, 429, 5xx: keep it and back off (a 404
 *              or 405 means something other than Satchel answers on that port: a wrong port
 *              setting must not cost the user the captures waiting in the queue)
 *   'drop'     any other 4xx (400, 413, 415, 422...): it will never be accepted; drop it
 */
export function classifyStatus(status) {
  if (status >= 200 && status < 300) return 'done';
  if (status === 401 || status === 403) return 'unpaired';
  if ([404, 405, 408, 429].includes(status)) return 'retry';
  if (status >= 400 && status < 500) return 'drop';
  return 'retry'; // 0 (network error), 5xx, and anything unexpected
}

const DEFAULT_TIMEOUT_MS = 10_000;

export class DaemonClient {
  /**
   * @param {object} o
   * @param {string} o.base     e.g. "http://127.0.0.1:4017"
   * @param {string} [o.token]  bearer token from pairing
   * @param {typeof fetch} [o.fetch]
   */
  constructor({ base, token, fetch: fetchImpl = globalThis.fetch, timeoutMs = DEFAULT_TIMEOUT_MS }) {
    this.base = base.replace(/\/+$/, '');
    this.token = token || null;
    // Called as a plain function: a browser's fetch throws "Illegal invocation" when called
    // as a method of another object.
    this.fetch = (url, init) => fetchImpl(url, init);
    this.timeoutMs = timeoutMs;
  }

  /**
   * One request. Never throws: returns { status, ok, outcome, body, error }.
   * status is 0 when the daemon could not be reached (or timed out).
   */
  async request(method, path, { body, auth = true, timeoutMs = this.timeoutMs } = {}) {
    const headers = { Accept: 'application/json' };
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    if (auth && this.token) headers.Authorization = `Bearer ${this.token}`;
    let res;
    try {
      res = await this.fetch(this.base + path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        signal: AbortSignal.timeout(timeoutMs),
        credentials: 'omit',
        cache: 'no-store',
      });
    } catch (e) {
      const error = e?.name === 'TimeoutError' ? 'daemon did not answer in time' : 'daemon not reachable';
      // detail: the browser's own message ("Failed to fetch", "NetworkError when...").
      return { status: 0, ok: false, outcome: 'retry', body: null, error, detail: String(e?.message ?? e) };
    }
    let parsed = null;
    try {
      parsed = await res.json();
    } catch {
      // Not JSON (or empty): keep parsed = null.
    }
    const outcome = classifyStatus(res.status);
    const error =
      outcome === 'done' ? null : (parsed && typeof parsed.error === 'string' && parsed.error) || `HTTP ${res.status}`;
    return { status: res.status, ok: outcome === 'done', outcome, body: parsed, error };
  }

  /** GET /health -> { reachable, paired, error } */
  async health() {
    const r = await this.request('GET', '/health', { timeoutMs: 5_000 });
    return {
      reachable: r.status !== 0,
      paired: r.ok && r.body?.paired === true,
      error: r.error,
      status: r.status,
    };
  }

  /** POST /pair with an already-normalised code -> the request result; body.token on success. */
  pair(code) {
    return this.request('POST', '/pair', { body: { code }, auth: false });
  }

  /** POST /pages. A 5 MiB body over loopback is quick, but give it more time than the rest. */
  savePage(capture) {
    return this.request('POST', '/pages', { body: capture, timeoutMs: 30_000 });
  }

  /** GET /pages/state?url= */
  pageState(url) {
    return this.request('GET', `/pages/state?url=${encodeURIComponent(url)}`, { timeoutMs: 5_000 });
  }

  /** POST /search */
  search(query, topK = 10) {
    return this.request('POST', '/search', { body: { query, top_k: topK } });
  }
}
