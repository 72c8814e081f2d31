//! What the benchmarks share: where the photos are and the tasks T1–T5.

use std::path::PathBuf;

use pixgate::image::{Engine, ImageLimits};
use pixgate::options::{OutputFormat, ResizingType, TransformSpec};

/// One benchmark task.
pub struct Task {
    pub id: &'static str,
    pub name: &'static str,
    pub file: &'static str,
    pub spec: TransformSpec,
    pub format: OutputFormat,
}

/// `PIXGATE_PHOTOS`, or `../shared/fixtures/photos` beside the repository.
pub fn photos_dir() -> PathBuf {
    std::env::var_os("PIXGATE_PHOTOS").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures/photos"),
        PathBuf::from,
    )
}

pub fn spec(rt: ResizingType, w: u32, h: u32) -> TransformSpec {
    TransformSpec {
        resizing_type: rt,
        width: w,
        height: h,
        ..TransformSpec::default()
    }
}

/// The server's default limits.
pub fn engine() -> Engine {
    Engine::new(ImageLimits::default())
}

/// T1–T4 from the issue, T5 (progressive camera JPEG) and T6 (AVIF output, issue 20).
pub fn tasks() -> Vec<Task> {
    let jpeg12 = "photo_4000x3000_q90.jpg";
    vec![
        Task {
            id: "T1",
            name: "4000x3000 JPEG -> 800px JPEG q80",
            file: jpeg12,
            spec: spec(ResizingType::Fit, 800, 0),
            format: OutputFormat::Jpeg,
        },
        Task {
            id: "T2",
            name: "4000x3000 JPEG -> 800px WebP q80",
            file: jpeg12,
            spec: spec(ResizingType::Fit, 800, 0),
            format: OutputFormat::Webp,
        },
        Task {
            id: "T3",
            name: "4000x3000 JPEG -> 300x300 cover JPEG",
            file: jpeg12,
            spec: spec(ResizingType::Fill, 300, 300),
            format: OutputFormat::Jpeg,
        },
        Task {
            id: "T4",
            name: "2000x2000 PNG -> 400px PNG",
            file: "photo_2000x2000.png",
            spec: spec(ResizingType::Fit, 400, 0),
            format: OutputFormat::Png,
        },
        Task {
            id: "T5",
            name: "5640x3172 progressive JPEG -> 800px WebP",
            file: "src_elephants_5640x3172_progressive.jpg",
            spec: spec(ResizingType::Fit, 800, 0),
            format: OutputFormat::Webp,
        },
        Task {
            id: "T6",
            name: "4000x3000 JPEG -> 800px AVIF q80",
            file: jpeg12,
            spec: spec(ResizingType::Fit, 800, 0),
            format: OutputFormat::Avif,
        },
    ]
}
