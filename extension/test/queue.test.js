import { test } from 'node:test';
import assert from 'node:assert/strict';
import { CaptureQueue, MemoryStorage, QUEUE_MAX_BYTES, QUEUE_MAX_ITEMS } from '../src/lib/queue.js';
import { bodyBytes, buildCapture } from '../src/lib/capture.js';

const cap = (i, extra = {}) =>
  buildCapture({ url: `https://example.com/${i}`, title: `Page ${i}`, text: `text ${i}`, capturedAt: new Date(0), ...extra })
    .capture;

test('default caps fit under Chrome storage.local quota (10 MB)', () => {
  assert.equal(QUEUE_MAX_ITEMS, 50);
  assert.ok(QUEUE_MAX_BYTES <= 9 * 1000 * 1000);
});

test('captures persist in the storage object, oldest first, and survive a new queue instance', async () => {
  const storage = new MemoryStorage();
  const q = new CaptureQueue(storage);
  await q.add(cap(1));
  await q.add(cap(2), { error: 'daemon not reachable' });
  // A restarted service worker builds a new queue over the same storage.
  const again = new CaptureQueue(storage);
  const items = await again.list();
  assert.deepEqual(items.map((i) => i.capture.url), ['https://example.com/1', 'https://example.com/2']);
  assert.equal(items[1].lastError, 'daemon not reachable');
  assert.ok(Array.isArray(storage.data.queue), 'kept under the "queue" key');
});

test('count cap: the oldest are dropped and counted', async () => {
  const storage = new MemoryStorage();
  const q = new CaptureQueue(storage, { maxItems: 3 });
  for (let i = 1; i <= 3; i++) assert.equal((await q.add(cap(i))).dropped, 0);
  const r = await q.add(cap(4));
  assert.equal(r.dropped, 1);
  await q.add(cap(5));
  const urls = (await q.list()).map((i) => i.capture.url.slice(-1));
  assert.deepEqual(urls, ['3', '4', '5']);
  const s = await q.stats();
  assert.equal(s.count, 3);
  assert.equal(s.droppedFull, 2);
  assert.ok(s.lastDroppedAt);
});

test('byte cap: old captures make room for a new one; a lone big capture is kept', async () => {
  const size = bodyBytes(cap(1, { text: 'a'.repeat(400) }));
  const q = new CaptureQueue(new MemoryStorage(), { maxBytes: 2 * size + 10 }); // room for two
  await q.add(cap(1, { text: 'a'.repeat(400) }));
  await q.add(cap(2, { text: 'b'.repeat(400) }));
  const r = await q.add(cap(3, { text: 'c'.repeat(400) }));
  assert.equal(r.dropped, 1);
  assert.deepEqual((await q.list()).map((i) => i.capture.url.slice(-1)), ['2', '3']);
  const big = await q.add(cap(4, { text: 'd'.repeat(5000) }));
  assert.equal(big.dropped, 2);
  assert.deepEqual((await q.list()).map((i) => i.capture.url.slice(-1)), ['4']);
  assert.ok((await q.stats()).bytes > 5000);
});

test('a storage quota error drops the oldest and retries', async () => {
  const storage = new MemoryStorage();
  const realSet = storage.set.bind(storage);
  storage.set = async (items) => {
    if (items.queue && items.queue.length > 2) throw new Error('QUOTA_BYTES quota exceeded');
    return realSet(items);
  };
  const q = new CaptureQueue(storage);
  await q.add(cap(1));
  await q.add(cap(2));
  const r = await q.add(cap(3));
  assert.equal(r.dropped, 1);
  assert.deepEqual((await q.list()).map((i) => i.capture.url.slice(-1)), ['2', '3']);
});

test('remove, noteAttempt, recordError, clearNotices', async () => {
  const q = new CaptureQueue(new MemoryStorage());
  const { id: a } = await q.add(cap(1));
  const { id: b } = await q.add(cap(2));
  assert.notEqual(a, b);
  await q.noteAttempt(b, 'HTTP 503');
  await q.noteAttempt(b, 'daemon not reachable');
  let items = await q.list();
  assert.equal(items[1].attempts, 2);
  assert.equal(items[1].lastError, 'daemon not reachable');
  assert.equal(await q.remove(a), true);
  assert.equal(await q.remove(a), false);
  items = await q.list();
  assert.deepEqual(items.map((i) => i.id), [b]);

  for (let i = 0; i < 12; i++) await q.recordError({ url: `https://x/${i}`, status: 422, error: 'denied' });
  const s = await q.stats();
  assert.equal(s.errors.length, 10, 'only the last few errors are kept');
  assert.equal(s.errors[0].url, 'https://x/11', 'newest first');
  await q.clearNotices();
  assert.deepEqual((await q.stats()).errors, []);
  assert.equal((await q.stats()).count, 1, 'clearing notices keeps the queue');
});

test('concurrent adds are serialised (no lost update)', async () => {
  const q = new CaptureQueue(new MemoryStorage());
  await Promise.all(Array.from({ length: 20 }, (_, i) => q.add(cap(i))));
  assert.equal((await q.list()).length, 20);
});
