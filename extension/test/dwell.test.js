import { test } from 'node:test';
import assert from 'node:assert/strict';
import { DwellTracker } from '../src/lib/dwell.js';
import { dwellReached } from '../src/lib/rules.js';

function clock(start = 1_000) {
  const c = { t: start, now: () => c.t, advance: (ms) => (c.t += ms) };
  return c;
}

test('only visible-and-focused time counts', () => {
  const c = clock();
  const d = new DwellTracker(c.now);
  assert.equal(d.activeMs(), 0);
  d.update(true); // visible + focused
  c.advance(10_000);
  assert.equal(d.activeMs(), 10_000);
  d.update(false); // tab hidden or window blurred
  c.advance(60_000);
  assert.equal(d.activeMs(), 10_000);
  d.update(true);
  c.advance(15_000);
  assert.equal(d.activeMs(), 25_000);
  assert.equal(dwellReached(d.activeMs(), 30), false);
  c.advance(5_000);
  assert.equal(dwellReached(d.activeMs(), 30), true);
});

test('repeated updates in the same state neither lose nor double-count time', () => {
  const c = clock();
  const d = new DwellTracker(c.now);
  d.update(true);
  for (let i = 0; i < 10; i++) {
    c.advance(1_000);
    d.update(true);
  }
  assert.equal(d.activeMs(), 10_000);
  d.update(false);
  d.update(false);
  c.advance(5_000);
  assert.equal(d.activeMs(), 10_000);
  assert.equal(d.active, false);
});

test('a page that is never active never reaches the threshold', () => {
  const c = clock();
  const d = new DwellTracker(c.now);
  d.update(false);
  c.advance(3_600_000);
  assert.equal(dwellReached(d.activeMs(), 30), false);
});
