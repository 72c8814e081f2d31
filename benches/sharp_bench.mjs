// sharp (libvips) side of benches/compare.sh, driven by benches/pipeline.rs over stdin/stdout
// so that sharp and pixgate alternate run by run and see the same machine conditions.
//
//   node benches/sharp_bench.mjs <sharp module dir> <photos dir> <out dir> <webp effort> <png level>
//
// Protocol (one line each way): `version` → JSON of sharp/libvips versions; `<task>` (T1..T5) →
// milliseconds for one run (the first run of a task also writes its output to
// <out dir>/sharp_<task>.<ext> and is a warm-up); `bytes <task>` → output size;
// `throughput <n>` → T1 images/second with two pipelines in flight, n per lane.
import { createRequire } from 'node:module';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';

const [sharpDir, photos, outDir, webpEffort, pngLevel] = process.argv.slice(2);
const require = createRequire(join(sharpDir, 'node_modules', 'x.js'));
const sharp = require('sharp');
sharp.concurrency(1); // one libvips worker thread per pipeline
sharp.cache(false); // no operation cache between runs
sharp.simd(true);

const effort = Number(webpEffort);
const tasks = {
  T1: ['photo_4000x3000_q90.jpg', (s) => s.resize(800).jpeg({ quality: 80, progressive: true }), 'jpg'],
  T2: ['photo_4000x3000_q90.jpg', (s) => s.resize(800).webp({ quality: 80, effort }), 'webp'],
  T3: ['photo_4000x3000_q90.jpg', (s) => s.resize(300, 300, { fit: 'cover' }).jpeg({ quality: 80, progressive: true }), 'jpg'],
  T4: ['photo_2000x2000.png', (s) => s.resize(400).png({ compressionLevel: Number(pngLevel) }), 'png'],
  T5: ['src_elephants_5640x3172_progressive.jpg', (s) => s.resize(800).webp({ quality: 80, effort }), 'webp'],
  // sharp's AVIF is libheif + aom at its default effort (4), 8-bit 4:2:0 like pixgate's rav1e.
  T6: ['photo_4000x3000_q90.jpg', (s) => s.resize(800).avif({ quality: 80 }), 'avif'],
};
const inputs = {};
const sizes = {};
const input = (file) => (inputs[file] ??= readFileSync(join(photos, file)));

const rl = createInterface({ input: process.stdin });
for await (const line of rl) {
  const [cmd, arg] = line.trim().split(/\s+/);
  if (cmd === 'version') {
    console.log(JSON.stringify(sharp.versions));
  } else if (cmd === 'bytes') {
    console.log(String(sizes[arg] ?? -1));
  } else if (cmd === 'throughput') {
    const n = Number(arg);
    const [file, op] = tasks.T1;
    const lane = async () => { for (let i = 0; i < n; i++) await op(sharp(input(file))).toBuffer(); };
    const start = process.hrtime.bigint();
    await Promise.all([lane(), lane()]);
    console.log(String((2 * n) / (Number(process.hrtime.bigint() - start) / 1e9)));
  } else if (tasks[cmd]) {
    const [file, op, ext] = tasks[cmd];
    const buf = input(file);
    const t = process.hrtime.bigint();
    const out = await op(sharp(buf)).toBuffer();
    const ms = Number(process.hrtime.bigint() - t) / 1e6;
    if (sizes[cmd] === undefined) writeFileSync(join(outDir, `sharp_${cmd}.${ext}`), out);
    sizes[cmd] = out.length;
    console.log(String(ms));
  } else {
    console.log('error');
  }
}
