// Retry schedule for captures queued while the daemon is down or unpaired.
// 5 s after the first failure, doubling each time, never more than 10 minutes.

export const BACKOFF_BASE_MS = 5_000;
export const BACKOFF_MAX_MS = 10 * 60_000;

/** Delay before the next try after `failures` consecutive failures (failures >= 1). */
export function backoffDelay(failures, { base = BACKOFF_BASE_MS, max = BACKOFF_MAX_MS } = {}) {
  const n = Math.max(1, Math.floor(failures));
  // Cap the exponent so 2 ** n never overflows to Infinity for a long outage.
  return Math.min(max, base * 2 ** Math.min(n - 1, 30));
}

/** The backoff state after one more failure at time `now`. */
export function nextBackoff(state, now, opts) {
  const failures = (state?.failures ?? 0) + 1;
  return { failures, nextAt: now + backoffDelay(failures, opts) };
}

/** Is a retry due at `now`? (No state: yes.) */
export function retryDue(state, now) {
  return !state || !state.nextAt || now >= state.nextAt;
}
