//! Criterion benchmark of the pure pipeline (`Engine::transform`, exactly what a worker runs)
//! for T1–T4 on the realistic photos, single thread. For the side-by-side comparison with
//! sharp in the same run, use `bash benches/compare.sh`.
//!
//!     cargo bench --bench engine
//!     PIXGATE_PHOTOS=/dir cargo bench --bench engine

mod common;

use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};

fn pipeline(c: &mut Criterion) {
    let engine = common::engine();
    let mut group = c.benchmark_group("pipeline");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(4));
    for task in common::tasks()
        .into_iter()
        .filter(|t| t.id != "T5" && t.id != "T6")
    {
        let name = format!("{} {}", task.id, task.name);
        let Ok(bytes) = std::fs::read(common::photos_dir().join(task.file)) else {
            eprintln!(
                "skipping {name}: {} not found (set PIXGATE_PHOTOS)",
                task.file
            );
            continue;
        };
        group.bench_function(name, |b| {
            b.iter(|| {
                engine
                    .transform(&bytes, &task.spec, task.format, 80)
                    .expect("transform")
            })
        });
    }
    group.finish();
}

criterion_group!(benches, pipeline);
criterion_main!(benches);
