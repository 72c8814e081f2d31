// sharp (libvips) side of benches/compare.sh: the same tasks as benches/pipeline.rs, one
// libvips thread, median of RUNS; writes outputs and timings to OUT_DIR for the Rust side,
// which prints the comparison (time ratio, output size, PSNR) in the same run.
//
//   node benches/sharp_bench.mjs <sharp module dir> <photos dir> <out dir> <webp effort> <png level> <result.json>
import { createRequire } from 'node:module';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

const [sharpDir, photos, outDir, webpEffort, pngLevel, resultFile] = process.argv.slice(2);
const require = createRequire(join(sharpDir, 'node_modules', 'x.js'));
const sharp = require('sharp');
sharp.concurrency(1); // one libvips worker thread per pipeline
sharp.cache(false); // no operation cache between runs
sharp.simd(true);

const RUNS = 9; // as benches/pipeline.rs
const tasks = [
  ['T1', 'photo_4000x3000_q90.jpg', (s) => s.resize(800).jpeg({ quality: 80 }), 'jpg'],
  ['T2', 'photo_4000x3000_q90.jpg', (s) => s.resize(800).webp({ quality: 80, effort: Number(webpEffort) }), 'webp'],
  ['T3', 'photo_4000x3000_q90.jpg', (s) => s.resize(300, 300, { fit: 'cover' }).jpeg({ quality: 80 }), 'jpg'],
  ['T4', 'photo_2000x2000.png', (s) => s.resize(400).png({ compressionLevel: Number(pngLevel) }), 'png'],
  ['T5', 'src_elephants_5640x3172_progressive.jpg', (s) => s.resize(800).webp({ quality: 80, effort: Number(webpEffort) }), 'webp'],
];

const median = (xs) => xs.slice().sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const result = { version: sharp.versions, tasks: {} };
for (const [name, file, op, ext] of tasks) {
  let input;
  try { input = readFileSync(join(photos, file)); } catch { continue; }
  let out = await op(sharp(input)).toBuffer(); // warm-up
  const times = [];
  for (let i = 0; i < RUNS; i++) {
    const t = process.hrtime.bigint();
    out = await op(sharp(input)).toBuffer();
    times.push(Number(process.hrtime.bigint() - t) / 1e6);
  }
  writeFileSync(join(outDir, `sharp_${name}.${ext}`), out);
  result.tasks[name] = { ms: median(times), bytes: out.length };
}

// Throughput: T1 with two pipelines in flight (libuv pool of 2, one libvips thread each).
const t1 = readFileSync(join(photos, 'photo_4000x3000_q90.jpg'));
const PER_LANE = Number(process.env.LANE_RUNS || 10);
const lane = async () => { for (let i = 0; i < PER_LANE; i++) await sharp(t1).resize(800).jpeg({ quality: 80 }).toBuffer(); };
await lane(); // warm-up
const start = process.hrtime.bigint();
await Promise.all([lane(), lane()]);
const secs = Number(process.hrtime.bigint() - start) / 1e9;
result.throughput_t1 = (2 * PER_LANE) / secs;
writeFileSync(resultFile, JSON.stringify(result, null, 2));
