// A tiny PNG writer (RGBA, no filtering) so the icons need no image library.
import { deflateSync } from 'node:zlib';
import { crc32 } from './crc32.js';

function chunk(type, data) {
  const len = Buffer.alloc(4);
  len.writeUInt32BE(data.length);
  const body = Buffer.concat([Buffer.from(type, 'ascii'), data]);
  const crc = Buffer.alloc(4);
  crc.writeUInt32BE(crc32(body));
  return Buffer.concat([len, body, crc]);
}

/** Encode a size x size image; pixel(x, y) returns [r, g, b, a]. */
export function encodePng(size, pixel) {
  const raw = Buffer.alloc(size * (size * 4 + 1));
  let o = 0;
  for (let y = 0; y < size; y++) {
    raw[o++] = 0; // filter: none
    for (let x = 0; x < size; x++) {
      const [r, g, b, a] = pixel(x, y);
      raw[o++] = r;
      raw[o++] = g;
      raw[o++] = b;
      raw[o++] = a;
    }
  }
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(size, 0);
  ihdr.writeUInt32BE(size, 4);
  ihdr[8] = 8; // bit depth
  ihdr[9] = 6; // colour type: RGBA
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk('IHDR', ihdr),
    chunk('IDAT', deflateSync(raw)),
    chunk('IEND', Buffer.alloc(0)),
  ]);
}

/**
 * The Satchel icon: a rounded teal bag with a lighter flap and a clasp. Coordinates are in
 * units of the icon size so every size is drawn from the same shape (4x4 supersampled).
 */
export function satchelIcon(size) {
  const teal = [0x1f, 0x7a, 0x6d];
  const flap = [0x2f, 0xa3, 0x91];
  const clasp = [0xf2, 0xc1, 0x4e];
  const inRoundRect = (x, y, x0, y0, x1, y1, r) => {
    if (x < x0 || x > x1 || y < y0 || y > y1) return false;
    const cx = Math.min(Math.max(x, x0 + r), x1 - r);
    const cy = Math.min(Math.max(y, y0 + r), y1 - r);
    return (x - cx) ** 2 + (y - cy) ** 2 <= r * r;
  };
  const colourAt = (u, v) => {
    // handle: a ring above the bag
    const d = Math.hypot(u - 0.5, v - 0.3);
    if (v < 0.3 && d > 0.17 && d < 0.25) return teal;
    if (!inRoundRect(u, v, 0.06, 0.28, 0.94, 0.94, 0.12)) return null;
    if (inRoundRect(u, v, 0.42, 0.5, 0.58, 0.64, 0.03)) return clasp;
    if (v < 0.56) return flap;
    return teal;
  };
  return encodePng(size, (x, y) => {
    const S = 4;
    let r = 0, g = 0, b = 0, n = 0;
    for (let i = 0; i < S; i++) {
      for (let j = 0; j < S; j++) {
        const c = colourAt((x + (i + 0.5) / S) / size, (y + (j + 0.5) / S) / size);
        if (c) {
          r += c[0];
          g += c[1];
          b += c[2];
          n++;
        }
      }
    }
    if (!n) return [0, 0, 0, 0];
    return [Math.round(r / n), Math.round(g / n), Math.round(b / n), Math.round((255 * n) / (S * S))];
  });
}
