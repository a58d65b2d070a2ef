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

/** HMAC-SHA256(keyHex, challengeHex) as hex, with WebCrypto (service worker, page, Node). */
export async function proofFor(keyHex, challengeHex) {
  const bytes = (hex) => Uint8Array.from(hex.match(/../g) ?? [], (b) => parseInt(b, 16));
  const key = await crypto.subtle.importKey('raw', bytes(keyHex), { name: 'HMAC', hash: 'SHA-256' }, false, [
    'sign',
  ]);
  const mac = new Uint8Array(await crypto.subtle.sign('HMAC', key, bytes(challengeHex)));
  return Array.from(mac, (b) => b.toString(16).padStart(2, '0')).join('');
}

export class DaemonClient {
  /**
   * @param {object} o
   * @param {string} o.base     e.g. "http://127.0.0.1:4017"
   * @param {string} [o.token]  bearer token from pairing
   * @param {string} [o.key]    the daemon's key from pairing (hex): it must prove itself with it
   *                            before the token or a page is sent
   * @param {typeof fetch} [o.fetch]
   */
  constructor({ base, token, key, fetch: fetchImpl = globalThis.fetch, timeoutMs = DEFAULT_TIMEOUT_MS }) {
    this.base = base.replace(/\/+$/, '');
    this.token = token || null;
    this.key = key || null;
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
    if (auth && this.token && this.key) {
      // Another local user could have bound the port while the daemon was down: nothing
      // with the token or a page in it leaves before the daemon has proved itself.
      const proof = await this.verify();
      if (!proof.ok) return proof;
    }
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

  /**
   * Ask the daemon to prove it holds the key pairing gave us (GET /health?challenge=, sent
   * with no token). Returns { ok: true } or a failed request result (outcome 'retry').
   *
   * Asked before every request that carries the token, never remembered: the daemon can stop
   * and an impostor bind its port between any two requests. On loopback it costs a
   * millisecond, and requests are few (a save, a badge lookup, a search).
   */
  async verify() {
    const challenge = Array.from(crypto.getRandomValues(new Uint8Array(32)), (b) =>
      b.toString(16).padStart(2, '0'),
    ).join('');
    const r = await this.request('GET', `/health?challenge=${challenge}`, { auth: false, timeoutMs: 5_000 });
    if (r.status === 0) return r;
    if (typeof r.body?.proof === 'string' && r.body.proof === (await proofFor(this.key, challenge))) {
      return { ok: true };
    }
    return {
      status: r.status,
      ok: false,
      outcome: 'retry',
      body: null,
      impostor: true,
      error: `something other than the Satchel daemon you paired with answers on ${this.base}: nothing was sent to it`,
    };
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
