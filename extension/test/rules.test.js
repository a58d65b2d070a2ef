import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  isDenied,
  DEFAULT_DENY_LIST,
  autoSaveEligibility,
  dwellReached,
  findMatchingRule,
  isHttpUrl,
  parseRule,
  parseRules,
} from '../src/lib/rules.js';
import { DEFAULT_SETTINGS, normalizeSettings } from '../src/lib/settings.js';

const on = (patch = {}) => normalizeSettings({ autosave: true, ...patch });
const eligible = (url, settings = on(), incognito = false) => autoSaveEligibility({ url, incognito, settings });

test('only http and https URLs are capturable', () => {
  assert.equal(isHttpUrl('http://example.com/'), true);
  assert.equal(isHttpUrl('https://example.com/a?b#c'), true);
  for (const u of ['file:///etc/passwd', 'chrome://settings', 'about:blank', 'ftp://x.org/', 'moz-extension://x/p.html', 'not a url', '', null]) {
    assert.equal(isHttpUrl(u), false, u);
  }
  assert.deepEqual(eligible('file:///home/me/notes.html'), { ok: false, reason: 'not-http' });
  assert.deepEqual(eligible('data:text/html,hi'), { ok: false, reason: 'not-http' });
});

test('rule parsing: comments, blanks, schemes, ports, trailing slash, case', () => {
  assert.equal(parseRule('   '), null);
  assert.equal(parseRule('# webmail'), null);
  assert.deepEqual(parseRule(' Example.COM '), { kind: 'suffix', host: 'example.com', path: '', source: 'Example.COM' });
  assert.equal(parseRule('https://example.com/').host, 'example.com');
  assert.equal(parseRule('https://example.com/').path, '');
  assert.equal(parseRule('localhost:8080').host, 'localhost');
  assert.deepEqual(parseRule('*.bank'), { kind: 'suffix', host: 'bank', path: '', source: '*.bank' });
  assert.deepEqual(parseRule('mychart.*'), { kind: 'label', host: 'mychart', path: '', source: 'mychart.*' });
  assert.deepEqual(parseRule('google.*/search'), { kind: 'label', host: 'google', path: '/search', source: 'google.*/search' });
  assert.equal(parseRule('ex*ample.com'), null, 'wildcards only at either end');
  assert.equal(parseRules('a.com\n\n# c\r\nb.org\n').length, 2);
});

test('a domain rule matches the domain and its subdomains, not look-alikes', () => {
  const rules = 'paypal.com';
  assert.ok(findMatchingRule(rules, 'https://paypal.com/'));
  assert.ok(findMatchingRule(rules, 'https://www.paypal.com/signin'));
  assert.ok(findMatchingRule(rules, 'https://a.b.PAYPAL.com./x'));
  assert.equal(findMatchingRule(rules, 'https://notpaypal.com/'), null);
  assert.equal(findMatchingRule(rules, 'https://paypal.com.evil.net/'), null);
  assert.equal(findMatchingRule(rules, 'https://example.com/?u=paypal.com'), null);
});

test('TLD-style wildcard *.bank', () => {
  assert.ok(findMatchingRule('*.bank', 'https://www.example.bank/login'));
  assert.ok(findMatchingRule('*.bank', 'https://example.bank/'));
  assert.equal(findMatchingRule('*.bank', 'https://bank.example.com/'), null);
  assert.equal(findMatchingRule('*.bank', 'https://banking.com/'), null);
});

test('label wildcard mychart.* and google.*', () => {
  assert.ok(findMatchingRule('mychart.*', 'https://mychart.example.org/'));
  assert.ok(findMatchingRule('mychart.*', 'https://www.mychart.health.net/'));
  assert.equal(findMatchingRule('mychart.*', 'https://notmychart.org/'), null);
  assert.equal(findMatchingRule('mychart.*', 'https://mychart/'), null, 'needs a label after it');
  assert.ok(findMatchingRule('google.*', 'https://www.google.co.uk/'));
});

test('path-prefix rules', () => {
  const rules = 'google.*/search\nbing.com/search';
  assert.ok(findMatchingRule(rules, 'https://www.google.com/search?q=satchel'));
  assert.ok(findMatchingRule(rules, 'https://www.google.de/search?q=x'));
  assert.ok(findMatchingRule(rules, 'https://www.bing.com/search?q=x'));
  assert.equal(findMatchingRule(rules, 'https://www.google.com/maps'), null);
  assert.equal(findMatchingRule(rules, 'https://www.bing.com/'), null);
  assert.equal(findMatchingRule(rules, 'https://example.com/search'), null);
});

test('the default deny list covers webmail, banking, health, search results', () => {
  const denied = [
    'https://mail.google.com/mail/u/0/#inbox',
    'https://outlook.live.com/mail/0/',
    'https://outlook.office.com/mail/',
    'https://mail.yahoo.com/d/folders/1',
    'https://mail.proton.me/u/0/inbox',
    'https://www.example.bank/',
    'https://www.paypal.com/myaccount',
    'https://secure.chase.com/web/auth',
    'https://www.bankofamerica.com/',
    'https://connect.secure.wellsfargo.com/',
    'https://mychart.example-health.org/MyChart/',
    'https://www.google.com/search?q=satchel',
    'https://www.google.co.uk/search?q=satchel',
    'https://www.bing.com/search?q=satchel',
    'https://duckduckgo.com/?q=satchel',
    'http://localhost:3000/',
    'http://127.0.0.1:4017/health',
  ];
  for (const url of denied) {
    const v = eligible(url);
    assert.equal(v.ok, false, url);
    assert.equal(v.reason, 'denied', url);
  }
  for (const url of ['https://en.wikipedia.org/wiki/Satchel', 'https://www.google.com/maps', 'https://blog.example.com/post']) {
    assert.deepEqual(eligible(url), { ok: true }, url);
  }
  assert.equal(DEFAULT_SETTINGS.denyList, DEFAULT_DENY_LIST);
});

test('the deny list is user-editable: an emptied list denies nothing, new rules apply', () => {
  assert.equal(eligible('https://mail.google.com/', on({ denyList: '' })).ok, true);
  const v = eligible('https://news.example.com/a', on({ denyList: 'example.com' }));
  assert.deepEqual(v, { ok: false, reason: 'denied', rule: 'example.com' });
});

test('allow-list mode saves only listed sites, and ignores the deny list', () => {
  const s = on({ listMode: 'allow', allowList: 'wikipedia.org\nexample.com/blog' });
  assert.deepEqual(eligible('https://en.wikipedia.org/wiki/X', s), { ok: true, rule: 'wikipedia.org' });
  assert.equal(eligible('https://example.com/blog/post', s).ok, true);
  assert.deepEqual(eligible('https://example.com/shop', s), { ok: false, reason: 'not-allowed' });
  assert.deepEqual(eligible('https://news.ycombinator.com/', s), { ok: false, reason: 'not-allowed' });
  assert.deepEqual(eligible('https://anything.org/', on({ listMode: 'allow', allowList: '' })), { ok: false, reason: 'not-allowed' });
});

test('auto-save is off by default and never runs in private windows', () => {
  assert.deepEqual(eligible('https://example.com/', normalizeSettings({})), { ok: false, reason: 'disabled' });
  assert.deepEqual(eligible('https://example.com/', on(), true), { ok: false, reason: 'incognito' });
  // Unknown incognito state is treated as private (fail closed).
  assert.deepEqual(autoSaveEligibility({ url: 'https://example.com/', settings: on() }), { ok: false, reason: 'incognito' });
  // Even an allow-listed site.
  const s = on({ listMode: 'allow', allowList: 'example.com' });
  assert.deepEqual(eligible('https://example.com/', s, true), { ok: false, reason: 'incognito' });
});

test('dwell threshold decision', () => {
  assert.equal(dwellReached(29_999, 30), false);
  assert.equal(dwellReached(30_000, 30), true);
  assert.equal(dwellReached(45_000, 30), true);
  assert.equal(dwellReached(0, 1), false);
  assert.equal(dwellReached(NaN, 30), false);
});

test('deny-listed pages are recognised for the badge lookup too', () => {
  const settings = normalizeSettings({});
  assert.equal(isDenied('https://mail.google.com/mail/u/0/', settings), true);
  assert.equal(isDenied('https://www.chase.com/', settings), true);
  assert.equal(isDenied('https://example.com/article', settings), false);
  assert.equal(isDenied('chrome://settings', settings), false);
});
