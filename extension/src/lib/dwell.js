// Active dwell time: how long a page has been visible *and* focused.
// The content script feeds it the page's state on every visibility/focus change (and on a
// periodic tick); only time spent in the active state is counted.

export class DwellTracker {
  /** @param {() => number} now clock in milliseconds (injected so tests need no timers) */
  constructor(now = () => Date.now()) {
    this.now = now;
    this.accumulated = 0;
    this.activeSince = null; // timestamp when the current active stretch started, or null
  }

  /** Record the page's current state: active = visible and focused. */
  update(active) {
    const t = this.now();
    if (this.activeSince !== null) this.accumulated += Math.max(0, t - this.activeSince);
    this.activeSince = active ? t : null;
  }

  get active() {
    return this.activeSince !== null;
  }

  /** Total active milliseconds so far. */
  activeMs() {
    const running = this.activeSince !== null ? Math.max(0, this.now() - this.activeSince) : 0;
    return this.accumulated + running;
  }
}
