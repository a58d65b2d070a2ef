import { test } from 'node:test';
import assert from 'node:assert/strict';
import { MAX_BODY_BYTES, bodyBytes, buildCapture, cleanLang } from '../src/lib/capture.js';

const at = new Date('2024-05-01T12:00:00Z');

test('a capture has the fields the daemon expects; empty optional fields are left out', () => {
  const { capture, trimmed } = buildCapture({
    url: 'https://example.com/a',
    title: ' A page ',
    html: '<p>hi</p>',
    text: 'hi',
    lang: 'en',
    mode: 'manual',
    capturedAt: at,
  });
  assert.deepEqual(capture, {
    url: 'https://example.com/a',
    title: 'A page',
    captured_at: '2024-05-01T12:00:00.000Z',
    mode: 'manual',
    html: '<p>hi</p>',
    text: 'hi',
    lang: 'en',
  });
  assert.deepEqual(trimmed, []);
  const sel = buildCapture({ url: 'https://e.com/', title: '', selection: 'quote', mode: 'selection', capturedAt: at }).capture;
  assert.deepEqual(Object.keys(sel).sort(), ['captured_at', 'mode', 'selection', 'title', 'url']);
  assert.equal(sel.title, 'https://e.com/', 'an untitled page is titled by its URL');
  assert.throws(() => buildCapture({ url: 'https://e.com/', mode: 'bogus' }));
});

test('captured_at is RFC 3339 with an offset', () => {
  const { capture } = buildCapture({ url: 'https://e.com/', title: 't' });
  assert.match(capture.captured_at, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$/);
});

test('over 5 MiB with HTML: the HTML is dropped and the text kept', () => {
  const { capture, bytes, trimmed } = buildCapture({
    url: 'https://e.com/',
    title: 't',
    html: '<p>' + 'x'.repeat(MAX_BODY_BYTES) + '</p>',
    text: 'the article text',
    capturedAt: at,
  });
  assert.equal(capture.html, undefined);
  assert.equal(capture.text, 'the article text');
  assert.deepEqual(trimmed, ['html']);
  assert.ok(bytes <= MAX_BODY_BYTES);
});

test('text alone over the cap is truncated to fit, counting UTF-8 bytes and JSON escapes', () => {
  for (const unit of ['a', 'é', '€', '😀', '"\n']) {
    const text = unit.repeat(Math.ceil((MAX_BODY_BYTES * 1.5) / unit.length));
    const { capture, bytes, trimmed } = buildCapture({ url: 'https://e.com/', title: 't', html: '<p>x</p>', text, capturedAt: at });
    assert.ok(bytes <= MAX_BODY_BYTES, `${unit}: ${bytes}`);
    assert.equal(bytes, bodyBytes(capture));
    assert.ok(bytes > MAX_BODY_BYTES * 0.9, `${unit}: not cut much more than needed (${bytes})`);
    assert.deepEqual(trimmed, ['html', 'text']);
    assert.ok(text.startsWith(capture.text));
    // No half surrogate pair left at the end.
    const last = capture.text.charCodeAt(capture.text.length - 1);
    assert.ok(!(last >= 0xd800 && last <= 0xdbff));
  }
});

test('a small cap is honoured too', () => {
  const { capture, bytes } = buildCapture(
    { url: 'https://e.com/', title: 't', text: 'y'.repeat(10_000), capturedAt: at },
    { maxBytes: 1_000 },
  );
  assert.ok(bytes <= 1_000);
  assert.ok(capture.text.length > 800);
});

test('lang is sent only when the daemon would accept it', () => {
  for (const ok of ['en', 'pt-BR', 'zh_Hant', 'de-DE-1996']) assert.equal(cleanLang(ok), ok);
  assert.equal(cleanLang(' fr '), 'fr');
  for (const bad of ['', 'x', 'english language', 'en--us', '{{lang}}', 'en-', null, undefined]) {
    assert.equal(cleanLang(bad), undefined, String(bad));
  }
  const { capture } = buildCapture({ url: 'https://e.com/', title: 't', text: 'x', lang: '{{ page.lang }}' });
  assert.equal('lang' in capture, false);
});
