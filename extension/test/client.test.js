import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';
import { DaemonClient, classifyStatus, proofFor } from '../src/lib/client.js';

test('response classification', () => {
  assert.equal(classifyStatus(200), 'done');
  assert.equal(classifyStatus(202), 'done');
  assert.equal(classifyStatus(401), 'unpaired');
  assert.equal(classifyStatus(403), 'unpaired');
  for (const s of [400, 413, 415, 422]) assert.equal(classifyStatus(s), 'drop', String(s));
  // Something else on the port (a wrong port setting): keep the captures.
  for (const s of [404, 405]) assert.equal(classifyStatus(s), 'retry', String(s));
  for (const s of [0, 408, 429, 500, 502, 503, 504]) assert.equal(classifyStatus(s), 'retry', String(s));
});

/** A fake fetch answering with (status, body) and recording the requests. */
function fakeFetch(status, body) {
  const calls = [];
  const fn = async function (url, init) {
    // Like a browser's fetch, refuse to be called as a method of some other object.
    if (this !== undefined && this !== globalThis) throw new TypeError('Illegal invocation');
    calls.push({ url, init });
    if (status === 'network') throw new TypeError('Failed to fetch');
    if (status === 'timeout') throw new DOMException('The operation timed out.', 'TimeoutError');
    const text = typeof body === 'string' ? body : JSON.stringify(body);
    return new Response(text, { status, headers: { 'Content-Type': 'application/json' } });
  };
  fn.calls = calls;
  return fn;
}

const capture = { url: 'https://example.com/', title: 'Ex', text: 'hi', captured_at: '2024-01-01T00:00:00.000Z', mode: 'manual' };

test('202 -> done, with the job and normalised URL', async () => {
  const f = fakeFetch(202, { job: 7, url: 'https://example.com/' });
  const c = new DaemonClient({ base: 'http://127.0.0.1:4017/', token: 'tok', fetch: f });
  const r = await c.savePage(capture);
  assert.equal(r.outcome, 'done');
  assert.equal(r.ok, true);
  assert.deepEqual(r.body, { job: 7, url: 'https://example.com/' });
  const { url, init } = f.calls[0];
  assert.equal(url, 'http://127.0.0.1:4017/pages');
  assert.equal(init.method, 'POST');
  assert.equal(init.headers.Authorization, 'Bearer tok');
  assert.equal(init.headers['Content-Type'], 'application/json');
  assert.deepEqual(JSON.parse(init.body), capture);
});

test('401 -> unpaired (keep), with the daemon error message', async () => {
  const c = new DaemonClient({ base: 'http://127.0.0.1:4017', token: 'bad', fetch: fakeFetch(401, { error: 'bad token' }) });
  const r = await c.savePage(capture);
  assert.equal(r.outcome, 'unpaired');
  assert.equal(r.error, 'bad token');
});

test('413, 400, 422 -> drop', async () => {
  for (const status of [413, 400, 422]) {
    const c = new DaemonClient({ base: 'http://127.0.0.1:4017', token: 't', fetch: fakeFetch(status, { error: `e${status}` }) });
    const r = await c.savePage(capture);
    assert.equal(r.outcome, 'drop', String(status));
    assert.equal(r.error, `e${status}`);
  }
});

test('network error, timeout and 503 -> retry', async () => {
  for (const status of ['network', 'timeout', 503]) {
    const c = new DaemonClient({ base: 'http://127.0.0.1:4017', token: 't', fetch: fakeFetch(status, 'Service Unavailable') });
    const r = await c.savePage(capture);
    assert.equal(r.outcome, 'retry', String(status));
    assert.equal(r.ok, false);
  }
  const c = new DaemonClient({ base: 'http://127.0.0.1:4017', fetch: fakeFetch('network') });
  const r = await c.savePage(capture);
  assert.equal(r.status, 0);
  assert.equal(r.error, 'daemon not reachable');
});

test('a non-JSON error body still gives a message', async () => {
  const c = new DaemonClient({ base: 'http://127.0.0.1:4017', token: 't', fetch: fakeFetch(500, '<h1>oops</h1>') });
  const r = await c.savePage(capture);
  assert.equal(r.error, 'HTTP 500');
  assert.equal(r.body, null);
});

test('health: reachable/paired; the token is sent when there is one', async () => {
  let f = fakeFetch(200, { ok: true, paired: true });
  let h = await new DaemonClient({ base: 'http://127.0.0.1:4017', token: 't', fetch: f }).health();
  assert.deepEqual([h.reachable, h.paired], [true, true]);
  assert.equal(f.calls[0].init.headers.Authorization, 'Bearer t');
  assert.equal(f.calls[0].init.method, 'GET');

  f = fakeFetch(200, { ok: true, paired: false });
  h = await new DaemonClient({ base: 'http://127.0.0.1:4017', fetch: f }).health();
  assert.deepEqual([h.reachable, h.paired], [true, false]);
  assert.equal(f.calls[0].init.headers.Authorization, undefined);

  h = await new DaemonClient({ base: 'http://127.0.0.1:4017', fetch: fakeFetch('network') }).health();
  assert.deepEqual([h.reachable, h.paired], [false, false]);
});

test('pair sends the code without a token; state and search encode their input', async () => {
  let f = fakeFetch(200, { token: 'new', origin: 'chrome-extension://abc' });
  let c = new DaemonClient({ base: 'http://127.0.0.1:4017', token: 'old', fetch: f });
  const p = await c.pair('ABCD-2345');
  assert.equal(p.body.token, 'new');
  assert.equal(f.calls[0].url, 'http://127.0.0.1:4017/pair');
  assert.equal(f.calls[0].init.headers.Authorization, undefined);
  assert.deepEqual(JSON.parse(f.calls[0].init.body), { code: 'ABCD-2345' });

  f = fakeFetch(403, { error: 'wrong or expired code' });
  c = new DaemonClient({ base: 'http://127.0.0.1:4017', fetch: f });
  assert.equal((await c.pair('NOPE-0000')).error, 'wrong or expired code');

  f = fakeFetch(200, { url: 'https://example.com/a', saved: true, saved_at: '2024-01-01T00:00:00+00:00' });
  c = new DaemonClient({ base: 'http://127.0.0.1:4017', token: 't', fetch: f });
  const s = await c.pageState('https://example.com/a?x=1&y=2#frag');
  assert.equal(s.body.saved, true);
  assert.equal(f.calls[0].url, 'http://127.0.0.1:4017/pages/state?url=https%3A%2F%2Fexample.com%2Fa%3Fx%3D1%26y%3D2%23frag');

  f = fakeFetch(200, { results: [] });
  c = new DaemonClient({ base: 'http://127.0.0.1:4017', token: 't', fetch: f });
  await c.search('hello world');
  assert.deepEqual(JSON.parse(f.calls[0].init.body), { query: 'hello world', top_k: 10 });
});

const KEY = '11'.repeat(32);

/** A daemon on the port: the real one (knows KEY) or an impostor; records what it was sent. */
function daemonAt({ knowsKey }) {
  const calls = [];
  const fn = async (url, init) => {
    calls.push({ url, init });
    const u = new URL(url);
    if (u.pathname === '/health') {
      const challenge = u.searchParams.get('challenge');
      const proof = knowsKey
        ? createHmac('sha256', Buffer.from(KEY, 'hex')).update(Buffer.from(challenge, 'hex')).digest('hex')
        : 'f'.repeat(64);
      return new Response(JSON.stringify({ ok: true, paired: false, proof }), { status: 200 });
    }
    return new Response(JSON.stringify({ job: 1, url: 'https://example.com/' }), { status: 202 });
  };
  fn.calls = calls;
  return fn;
}

test('proofFor is HMAC-SHA256', async () => {
  const expected = createHmac('sha256', Buffer.from(KEY, 'hex')).update(Buffer.from('abcd', 'hex')).digest('hex');
  assert.equal(await proofFor(KEY, 'abcd'), expected);
});

test('the daemon proves itself before the token or a page is sent', async () => {
  const f = daemonAt({ knowsKey: true });
  const c = new DaemonClient({ base: 'http://127.0.0.1:4101', token: 'tok', key: KEY, fetch: f });
  const r = await c.savePage(capture);
  assert.equal(r.outcome, 'done');
  assert.equal(f.calls.length, 2);
  assert.match(f.calls[0].url, /\/health\?challenge=[0-9a-f]{64}$/);
  assert.equal(f.calls[0].init.headers.Authorization, undefined);
  assert.equal(f.calls[1].init.headers.Authorization, 'Bearer tok');
  await c.savePage(capture); // asked again: the daemon may have been replaced since
  assert.equal(f.calls.length, 4);
  assert.notEqual(f.calls[0].url, f.calls[2].url); // a fresh challenge each time
});

test('an impostor on the port gets neither the token nor the page', async () => {
  const f = daemonAt({ knowsKey: false });
  const c = new DaemonClient({ base: 'http://127.0.0.1:4102', token: 'tok', key: KEY, fetch: f });
  const r = await c.savePage(capture);
  assert.equal(r.outcome, 'retry'); // the capture stays queued
  assert.equal(r.impostor, true);
  assert.match(r.error, /something other than the Satchel daemon/);
  assert.equal(f.calls.length, 1);
  assert.equal(f.calls[0].init.headers.Authorization, undefined);
  assert.equal(f.calls[0].init.body, undefined);
});
