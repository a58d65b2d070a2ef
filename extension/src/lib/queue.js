// Captures waiting for the daemon, persisted in a storage area (storage.local in the browser,
// an in-memory stand-in in tests). The storage object needs only the storage.local subset
//   get(key) -> Promise<{ [key]: value }>   and   set({ [key]: value }) -> Promise
//
// Caps: Chrome's storage.local holds 10 MB without the "unlimitedStorage" permission, which we
// do not ask for, so the queue keeps at most 50 captures and 8 MiB; one capture is at most
// 5 MiB (the daemon's own limit). When a new capture does not fit, the oldest ones are dropped
// and counted, so the popup can say so.

import { bodyBytes } from './capture.js';

export const QUEUE_MAX_ITEMS = 50;
export const QUEUE_MAX_BYTES = 8 * 1024 * 1024;
const MAX_ERRORS_KEPT = 10;

const QUEUE_KEY = 'queue';
const META_KEY = 'queueMeta';

function emptyMeta() {
  return { droppedFull: 0, lastDroppedAt: null, errors: [] };
}

export class CaptureQueue {
  constructor(storage, { maxItems = QUEUE_MAX_ITEMS, maxBytes = QUEUE_MAX_BYTES, now = () => Date.now() } = {}) {
    this.storage = storage;
    this.maxItems = maxItems;
    this.maxBytes = maxBytes;
    this.now = now;
    this.tail = Promise.resolve(); // serialises read-modify-write cycles
    this.seq = 0;
  }

  /** Run fn after every earlier operation on this queue has finished. */
  locked(fn) {
    const run = this.tail.then(fn, fn);
    this.tail = run.catch(() => {});
    return run;
  }

  async readItems() {
    const got = await this.storage.get(QUEUE_KEY);
    return Array.isArray(got?.[QUEUE_KEY]) ? got[QUEUE_KEY] : [];
  }

  async readMeta() {
    const got = await this.storage.get(META_KEY);
    return { ...emptyMeta(), ...(got?.[META_KEY] ?? {}) };
  }

  /** All queued items, oldest first: { id, capture, bytes, queuedAt, attempts, lastError }. */
  list() {
    return this.locked(() => this.readItems());
  }

  /**
   * Queue a capture. Oldest items are dropped until the new one fits.
   * Returns { id, dropped } (dropped: how many older captures were pushed out).
   */
  add(capture, { error = null } = {}) {
    return this.locked(async () => {
      const items = await this.readItems();
      const bytes = bodyBytes(capture);
      const id = `${this.now().toString(36)}-${(this.seq++).toString(36)}-${Math.random().toString(36).slice(2, 8)}`;
      items.push({ id, capture, bytes, queuedAt: this.now(), attempts: 0, lastError: error });
      let total = items.reduce((n, it) => n + it.bytes, 0);
      let dropped = 0;
      // Never drop the capture just added: a single capture is already capped below maxBytes.
      while (items.length > 1 && (items.length > this.maxItems || total > this.maxBytes)) {
        total -= items.shift().bytes;
        dropped++;
      }
      // storage.local may still refuse (quota shared with settings): make room and try again.
      for (;;) {
        try {
          await this.storage.set({ [QUEUE_KEY]: items });
          break;
        } catch (e) {
          if (items.length <= 1) throw e;
          items.shift();
          dropped++;
        }
      }
      if (dropped) {
        const meta = await this.readMeta();
        meta.droppedFull += dropped;
        meta.lastDroppedAt = this.now();
        await this.storage.set({ [META_KEY]: meta });
      }
      return { id, dropped };
    });
  }

  /** Remove an item (sent, or refused for good). */
  remove(id) {
    return this.locked(async () => {
      const items = await this.readItems();
      const left = items.filter((it) => it.id !== id);
      if (left.length !== items.length) await this.storage.set({ [QUEUE_KEY]: left });
      return left.length !== items.length;
    });
  }

  /** Note a failed attempt on an item that stays queued. */
  noteAttempt(id, error) {
    return this.locked(async () => {
      const items = await this.readItems();
      const it = items.find((x) => x.id === id);
      if (!it) return;
      it.attempts += 1;
      it.lastError = error ?? null;
      await this.storage.set({ [QUEUE_KEY]: items });
    });
  }

  /** Record a capture the daemon refused for good (kept for the popup, newest first). */
  recordError({ url, status, error }) {
    return this.locked(async () => {
      const meta = await this.readMeta();
      meta.errors = [{ url, status, error, at: this.now() }, ...meta.errors].slice(0, MAX_ERRORS_KEPT);
      await this.storage.set({ [META_KEY]: meta });
    });
  }

  /** Forget the "dropped" counter and the recorded errors (the popup's "clear" button). */
  clearNotices() {
    return this.locked(() => this.storage.set({ [META_KEY]: emptyMeta() }));
  }

  /** { count, bytes, droppedFull, lastDroppedAt, errors } */
  stats() {
    return this.locked(async () => {
      const items = await this.readItems();
      const meta = await this.readMeta();
      return {
        count: items.length,
        bytes: items.reduce((n, it) => n + it.bytes, 0),
        droppedFull: meta.droppedFull,
        lastDroppedAt: meta.lastDroppedAt,
        errors: meta.errors,
      };
    });
  }
}

/** A storage.local look-alike kept in memory (tests, and a fallback). Values are deep-copied. */
export class MemoryStorage {
  constructor(initial = {}) {
    this.data = structuredClone(initial);
  }
  async get(keys) {
    const list = keys == null ? Object.keys(this.data) : Array.isArray(keys) ? keys : [keys];
    const out = {};
    for (const k of list) if (k in this.data) out[k] = structuredClone(this.data[k]);
    return out;
  }
  async set(items) {
    for (const [k, v] of Object.entries(items)) this.data[k] = structuredClone(v);
  }
  async remove(keys) {
    for (const k of Array.isArray(keys) ? keys : [keys]) delete this.data[k];
  }
}
