import { test } from 'node:test';
import assert from 'node:assert/strict';
import { BACKOFF_MAX_MS, backoffDelay, nextBackoff, retryDue } from '../src/lib/backoff.js';

test('5 s doubling up to 10 minutes', () => {
  const secs = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10].map((n) => backoffDelay(n) / 1000);
  assert.deepEqual(secs, [5, 10, 20, 40, 80, 160, 320, 600, 600, 600]);
  assert.equal(backoffDelay(10_000), BACKOFF_MAX_MS, 'no overflow after a long outage');
  assert.equal(backoffDelay(0), 5_000);
});

test('nextBackoff counts failures and schedules the next try', () => {
  let s = null;
  s = nextBackoff(s, 1_000);
  assert.deepEqual(s, { failures: 1, nextAt: 6_000 });
  s = nextBackoff(s, 6_000);
  assert.deepEqual(s, { failures: 2, nextAt: 16_000 });
});

test('retryDue', () => {
  assert.equal(retryDue(null, 0), true);
  assert.equal(retryDue({ failures: 1, nextAt: 100 }, 99), false);
  assert.equal(retryDue({ failures: 1, nextAt: 100 }, 100), true);
});
