// URL rules for auto-save: which pages may be captured without the user asking.
//
// Rule format (one rule per line; blank lines and lines starting with "#" are ignored):
//   example.com          example.com and every subdomain (www.example.com, a.b.example.com)
//   *.bank               same suffix rule, written TLD-style: any host ending in ".bank"
//   mychart.*            any host containing the label "mychart" followed by more labels
//                        (mychart.example.org, www.mychart.health.net); handy for brands
//                        that live under many TLDs (google.* = google.com, google.co.uk, ...)
//   google.*/search      a host rule plus a path prefix: only URLs whose path starts with /search
// Matching is case-insensitive; a scheme ("https://") or port typed into a rule is ignored.
//
// Nothing here touches chrome.*: the module is imported by the background script and by Node tests.

/** The deny list a new install starts with (and "reset to defaults" restores). */
export const DEFAULT_DENY_LIST = `# Webmail
mail.google.com
outlook.live.com
outlook.office.com
outlook.office365.com
mail.yahoo.com
mail.proton.me
# Sign-in pages
accounts.google.com
login.microsoftonline.com
# Banking and payments
*.bank
paypal.com
chase.com
bankofamerica.com
wellsfargo.com
citi.com
capitalone.com
# Health
mychart.*
# Search result pages
google.*/search
bing.com/search
search.yahoo.com
duckduckgo.com
# Local addresses
localhost
127.0.0.1
`;

/** True for http: and https: URLs, the only ones Satchel ever captures. */
export function isHttpUrl(url) {
  try {
    const u = url instanceof URL ? url : new URL(url);
    return u.protocol === 'http:' || u.protocol === 'https:';
  } catch {
    return false;
  }
}

/**
 * Parse one rule line. Returns null for blank lines and comments.
 * Result: { kind: 'suffix' | 'label', host, path, source }
 */
export function parseRule(line) {
  let s = String(line).trim().toLowerCase();
  if (!s || s.startsWith('#')) return null;
  s = s.replace(/^[a-z][a-z0-9+.-]*:\/\//, ''); // a pasted scheme
  const slash = s.indexOf('/');
  let host = slash === -1 ? s : s.slice(0, slash);
  let path = slash === -1 ? '' : s.slice(slash);
  if (path === '/') path = ''; // "example.com/" means the whole site
  host = host.replace(/:\d*$/, ''); // ports are ignored
  let kind = 'suffix';
  if (host.startsWith('*.')) host = host.slice(2); // "*.bank": a suffix rule, spelled TLD-style
  else if (host.endsWith('.*')) {
    kind = 'label';
    host = host.slice(0, -2);
  }
  host = host.replace(/^\.+|\.+$/g, '');
  if (!host || host.includes('*')) return null; // wildcards elsewhere are not supported
  return { kind, host, path, source: line.trim() };
}

/** Parse a textarea's worth of rules (a string, one per line) or an array of lines. */
export function parseRules(text) {
  const lines = Array.isArray(text) ? text : String(text ?? '').split(/\r?\n/);
  return lines.map(parseRule).filter(Boolean);
}

function hostMatches(rule, hostname) {
  if (rule.kind === 'suffix') {
    return hostname === rule.host || hostname.endsWith('.' + rule.host);
  }
  // 'label': rule.host must be followed by at least one more label, at a label boundary.
  return hostname.startsWith(rule.host + '.') || hostname.includes('.' + rule.host + '.');
}

/** Does a parsed rule match this URL? */
export function ruleMatches(rule, url) {
  let u;
  try {
    u = url instanceof URL ? url : new URL(url);
  } catch {
    return false;
  }
  const hostname = u.hostname.toLowerCase().replace(/\.$/, '');
  if (!hostMatches(rule, hostname)) return false;
  return !rule.path || u.pathname.toLowerCase().startsWith(rule.path);
}

/** The first rule (parsed) that matches url, or null. `rules` may be text or parsed rules. */
export function findMatchingRule(rules, url) {
  const parsed = typeof rules === 'string' || rules == null ? parseRules(rules) : rules;
  return parsed.find((r) => ruleMatches(r, url)) ?? null;
}

/**
 * May this page be auto-saved (ignoring dwell time)?
 * Returns { ok: true } or { ok: false, reason } with reason one of
 * 'disabled', 'incognito', 'not-http', 'denied', 'not-allowed'.
 */
export function autoSaveEligibility({ url, incognito, settings }) {
  if (!settings?.autosave) return { ok: false, reason: 'disabled' };
  // Private windows are refused whatever the lists say.
  if (incognito !== false) return { ok: false, reason: 'incognito' };
  if (!isHttpUrl(url)) return { ok: false, reason: 'not-http' };
  if (settings.listMode === 'allow') {
    const rule = findMatchingRule(settings.allowList, url);
    return rule ? { ok: true, rule: rule.source } : { ok: false, reason: 'not-allowed' };
  }
  const rule = findMatchingRule(settings.denyList, url);
  return rule ? { ok: false, reason: 'denied', rule: rule.source } : { ok: true };
}

/**
 * Is this page on the deny list? Such pages are never looked up on the daemon (no badge), so
 * the daemon hears nothing of a banking or webmail page the user merely visits.
 */
export function isDenied(url, settings) {
  return isHttpUrl(url) && findMatchingRule(settings?.denyList ?? '', url) !== null;
}

/** Has the page been actively looked at long enough to be auto-saved? */
export function dwellReached(activeMs, dwellSeconds) {
  return Number.isFinite(activeMs) && activeMs >= Math.max(0, dwellSeconds) * 1000;
}
