//! Whether a screenshot shows something: its pixels counted against its background.

use std::collections::HashMap;
use std::path::Path;

use crate::BrowserTestError;

/// A screenshot's pixels: the background (its most common colour) and how many differ from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PixelCensus {
    pub width: u32,
    pub height: u32,
    /// The most common colour, RGBA.
    pub background: [u8; 4],
    /// Pixels of any other colour.
    pub non_background: u64,
}

impl PixelCensus {
    /// The share of pixels that are not background, 0.0 to 1.0.
    pub fn non_background_fraction(&self) -> f64 {
        let total = u64::from(self.width) * u64::from(self.height);
        if total == 0 {
            0.0
        } else {
            self.non_background as f64 / total as f64
        }
    }
}

/// Decodes the PNG at `path` and counts its pixels.
pub fn census(path: &Path) -> Result<PixelCensus, BrowserTestError> {
    let bad = |why: String| BrowserTestError::Screenshot {
        path: path.to_path_buf(),
        why,
    };
    let file = std::fs::File::open(path)
        .map_err(|e| BrowserTestError::io(format!("opening {}", path.display()), e))?;
    let mut decoder = png::Decoder::new(std::io::BufReader::new(file));
    // Palette, grey and 16-bit images become 8-bit RGB(A), so pixels compare as colours.
    decoder.set_transformations(png::Transformations::normalize_to_color8());
    let mut reader = decoder.read_info().map_err(|e| bad(e.to_string()))?;
    let size = reader
        .output_buffer_size()
        .ok_or_else(|| bad("the image is too large".into()))?;
    let mut buffer = vec![0; size];
    let frame = reader
        .next_frame(&mut buffer)
        .map_err(|e| bad(e.to_string()))?;
    let channels = frame.color_type.samples();
    let mut counts: HashMap<[u8; 4], u64> = HashMap::new();
    for row in buffer[..frame.buffer_size()].chunks_exact(frame.line_size) {
        for pixel in row[..frame.width as usize * channels].chunks_exact(channels) {
            let rgba = match *pixel {
                [grey] => [grey, grey, grey, 255],
                [grey, alpha] => [grey, grey, grey, alpha],
                [r, g, b] => [r, g, b, 255],
                [r, g, b, a] => [r, g, b, a],
                _ => return Err(bad(format!("{channels} channels per pixel"))),
            };
            *counts.entry(rgba).or_default() += 1;
        }
    }
    let total: u64 = counts.values().sum();
    let (background, most) = counts
        .into_iter()
        .max_by_key(|&(colour, n)| (n, colour))
        .ok_or_else(|| bad("the image has no pixels".into()))?;
    Ok(PixelCensus {
        width: frame.width,
        height: frame.height,
        background,
        non_background: total - most,
    })
}

/// Fails unless at least `min_fraction` of the screenshot's pixels differ from its background;
/// returns the census.
pub fn assert_not_blank(path: &Path, min_fraction: f64) -> Result<PixelCensus, BrowserTestError> {
    let found = census(path)?;
    if found.non_background_fraction() < min_fraction {
        return Err(BrowserTestError::Screenshot {
            path: path.to_path_buf(),
            why: format!(
                "it is blank: {} of its {}x{} pixels ({:.4}) differ from the background {:?}, \
                 fewer than the {min_fraction} required",
                found.non_background,
                found.width,
                found.height,
                found.non_background_fraction(),
                found.background
            ),
        });
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_png(path: &Path, width: u32, height: u32, pixel: impl Fn(u32, u32) -> [u8; 3]) {
        let file = std::fs::File::create(path).unwrap();
        let mut encoder = png::Encoder::new(file, width, height);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header().unwrap();
        let data: Vec<u8> = (0..height)
            .flat_map(|y| (0..width).map(move |x| (x, y)))
            .flat_map(|(x, y)| pixel(x, y))
            .collect();
        writer.write_image_data(&data).unwrap();
    }

    #[test]
    fn a_blank_image_is_refused_and_a_drawn_one_passes() {
        let dir = tempfile::tempdir().unwrap();
        let blank = dir.path().join("blank.png");
        write_png(&blank, 20, 10, |_, _| [255, 255, 255]);
        let err = assert_not_blank(&blank, 0.01).unwrap_err().to_string();
        assert!(
            err.contains("blank.png") && err.contains("blank: 0 of its 20x10"),
            "{err}"
        );

        // A dark 5x5 square on white: 25 of 200 pixels.
        let drawn = dir.path().join("drawn.png");
        write_png(&drawn, 20, 10, |x, y| {
            if x < 5 && y < 5 {
                [10, 20, 30]
            } else {
                [255, 255, 255]
            }
        });
        let found = assert_not_blank(&drawn, 0.1).unwrap();
        assert_eq!(found.background, [255, 255, 255, 255]);
        assert_eq!(found.non_background, 25);
        assert!(assert_not_blank(&drawn, 0.2).is_err());
    }

    #[test]
    fn a_file_that_is_not_a_png_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("not.png");
        std::fs::write(&path, b"<html>").unwrap();
        let err = census(&path).unwrap_err().to_string();
        assert!(err.contains("not.png"), "{err}");
    }
}
