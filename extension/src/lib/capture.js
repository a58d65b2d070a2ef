// Building the body of POST /pages, capped to what the daemon accepts.

/** The daemon refuses request bodies larger than this with 413. */
export const MAX_BODY_BYTES = 5 * 1024 * 1024;

export const MODES = Object.freeze(['manual', 'selection', 'auto']);

// A language tag the daemon accepts ("en", "pt-BR", "zh_Hant"); pages declare all sorts of
// things in <html lang>, and a malformed one would get the whole capture refused with 400.
const LANG_TAG = /^[A-Za-z]{2,3}(?:[-_][A-Za-z0-9]{1,8})*$/;

/** The page's lang attribute if the daemon will accept it, else undefined. */
export function cleanLang(lang) {
  const s = String(lang ?? '').trim();
  return LANG_TAG.test(s) ? s : undefined;
}

const encoder = new TextEncoder();

/** Size in bytes of the JSON body this capture would be sent as. */
export function bodyBytes(capture) {
  return encoder.encode(JSON.stringify(capture)).length;
}

/** Cut a string to `length` UTF-16 units without leaving half a surrogate pair at the end. */
function cut(s, length) {
  let out = s.slice(0, Math.max(0, length));
  const last = out.charCodeAt(out.length - 1);
  if (last >= 0xd800 && last <= 0xdbff) out = out.slice(0, -1);
  return out;
}

/** Shorten capture[field] until the whole body fits in maxBytes (or the field is empty). */
function shrinkField(capture, field, maxBytes) {
  let size = bodyBytes(capture);
  while (size > maxBytes && capture[field]) {
    const s = capture[field];
    // Scale the field by how far over we are, plus a little slack for JSON escapes;
    // converges in a step or two.
    const keep = Math.floor(s.length * Math.min(0.99, (maxBytes / size) * 0.98));
    capture[field] = cut(s, Math.min(keep, s.length - 1));
    size = bodyBytes(capture);
  }
  return size;
}

/**
 * Assemble a capture from what the page gave us and cap it at maxBytes:
 * too big with HTML -> send text only; text still too big -> truncate it.
 * Returns { capture, bytes, trimmed } where trimmed lists what was dropped or shortened.
 */
export function buildCapture(
  { url, title, html, text, selection, lang, mode = 'manual', capturedAt = new Date() },
  { maxBytes = MAX_BODY_BYTES } = {},
) {
  if (!MODES.includes(mode)) throw new Error(`unknown capture mode: ${mode}`);
  const capture = {
    url: String(url),
    title: String(title ?? '').trim() || String(url),
    captured_at: capturedAt instanceof Date ? capturedAt.toISOString() : String(capturedAt),
    mode,
  };
  // Optional fields are left out rather than sent empty.
  if (html) capture.html = String(html);
  if (text) capture.text = String(text);
  if (selection) capture.selection = String(selection);
  if (cleanLang(lang)) capture.lang = cleanLang(lang);

  const trimmed = [];
  let bytes = bodyBytes(capture);
  if (bytes > maxBytes && capture.html) {
    delete capture.html; // the daemon can work from text alone
    trimmed.push('html');
    bytes = bodyBytes(capture);
  }
  for (const field of ['text', 'selection', 'title']) {
    if (bytes <= maxBytes) break;
    bytes = shrinkField(capture, field, maxBytes);
    trimmed.push(field);
  }
  return { capture, bytes, trimmed };
}
