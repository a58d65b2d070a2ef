import { test } from 'node:test';
import assert from 'node:assert/strict';
import { DEFAULT_SETTINGS, daemonBase, normalizePairingCode, normalizeSettings } from '../src/lib/settings.js';

test('defaults: port 4017, auto-save off, 30 s dwell, deny-list mode', () => {
  const s = normalizeSettings(undefined);
  assert.equal(s.port, 4017);
  assert.equal(s.autosave, false);
  assert.equal(s.dwellSeconds, 30);
  assert.equal(s.listMode, 'deny');
  assert.equal(s.denyList, DEFAULT_SETTINGS.denyList);
  assert.equal(s.allowList, '');
  assert.equal(daemonBase(s), 'http://127.0.0.1:4017');
});

test('invalid values fall back to defaults', () => {
  const s = normalizeSettings({ port: 70000, dwellSeconds: -3, listMode: 'other', autosave: 'yes', denyList: 5 });
  assert.equal(s.port, 4017);
  assert.equal(s.dwellSeconds, 30);
  assert.equal(s.listMode, 'deny');
  assert.equal(s.autosave, false);
  assert.equal(s.denyList, DEFAULT_SETTINGS.denyList);
  assert.equal(normalizeSettings({ port: '' }).port, 4017);
  assert.equal(normalizeSettings({ port: '8123' }).port, 8123);
  assert.equal(daemonBase({ port: 8123 }), 'http://127.0.0.1:8123');
});

test('an emptied deny list stays empty (the user meant it)', () => {
  assert.equal(normalizeSettings({ denyList: '' }).denyList, '');
});

test('pairing codes are trimmed, upper-cased, and get their dash', () => {
  assert.equal(normalizePairingCode('  abcd-2345 '), 'ABCD-2345');
  assert.equal(normalizePairingCode('abcd2345'), 'ABCD-2345');
  assert.equal(normalizePairingCode('ABCD 2345'), 'ABCD-2345');
  assert.equal(normalizePairingCode('ab-cd-23-45'), 'ABCD-2345');
  assert.equal(normalizePairingCode(''), '');
  assert.equal(normalizePairingCode(' other-format-1 '), 'OTHER-FORMAT-1', 'other shapes pass through');
});
