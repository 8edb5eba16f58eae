//! Self-contained HTML pages of figures: SVG drawn by plotters and written inline, so a page
//! opens anywhere without scripts or other files. The training report (`train::figures`) and
//! the provider report (`providers::report::html`) are built from these pieces.

use std::fmt::Write as _;
use std::path::Path;

/// Why a page could not be drawn or written.
#[derive(Debug, thiserror::Error)]
pub enum FigureError {
    /// plotters refused to draw a figure.
    #[error("drawing the {figure} figure failed: {reason}")]
    Draw {
        /// The figure's id.
        figure: &'static str,
        /// What plotters said.
        reason: String,
    },
    /// The file could not be written.
    #[error("writing the HTML report to {path}: {source}")]
    Write {
        /// Where it was to go.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// What drawing one figure can fail with (plotters' error types are generic over the backend).
pub type Drawn = Result<(), Box<dyn std::error::Error>>;

/// Figure size in pixels.
pub const WIDTH: u32 = 640;
/// Figure height in pixels.
pub const HEIGHT: u32 = 400;

/// Starts a page: its title, the style, and a table of facts.
pub fn page_head(out: &mut String, title: &str, facts: &[(&str, String)]) {
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <title>{title}</title>\n<style>\n\
         body {{ font-family: sans-serif; max-width: 60rem; margin: 2rem auto; color: #222; }}\n\
         figure {{ margin: 2rem 0; }} figcaption {{ color: #555; }}\n\
         th {{ text-align: left; padding-right: 1rem; font-weight: normal; color: #555; }}\n\
         td {{ padding-right: 1rem; }}\n\
         </style>\n</head>\n<body>\n<h1>{title}</h1>\n<table>\n",
        title = escape(title)
    );
    for (name, value) in facts {
        let _ = writeln!(out, "<tr><th>{name}</th><td>{}</td></tr>", escape(value));
    }
    out.push_str("</table>\n");
}

/// Ends a page.
pub fn page_end(out: &mut String) {
    out.push_str("</body>\n</html>\n");
}

/// One figure with a stable id, its title, the SVG and a caption.
pub fn figure(out: &mut String, id: &str, title: &str, svg: &str, caption: &str) {
    let _ = write!(
        out,
        "<figure id=\"{id}\">\n<h2>{}</h2>\n{svg}\n<figcaption>{}</figcaption>\n</figure>\n",
        escape(title),
        escape(caption)
    );
}

/// A table with a heading row; every cell escaped.
pub fn table(out: &mut String, id: &str, title: &str, head: &[&str], rows: &[Vec<String>]) {
    let _ = write!(
        out,
        "<section id=\"{id}\">\n<h2>{}</h2>\n<table>\n<tr>",
        escape(title)
    );
    for h in head {
        let _ = write!(out, "<th>{}</th>", escape(h));
    }
    out.push_str("</tr>\n");
    for row in rows {
        out.push_str("<tr>");
        for cell in row {
            let _ = write!(out, "<td>{}</td>", escape(cell));
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</table>\n</section>\n");
}

/// Runs one drawing into an SVG string.
pub fn draw(
    figure: &'static str,
    paint: impl FnOnce(&mut String) -> Drawn,
) -> Result<String, FigureError> {
    let mut svg = String::new();
    paint(&mut svg).map_err(|e| FigureError::Draw {
        figure,
        reason: e.to_string(),
    })?;
    Ok(svg)
}

/// Writes a page to `path`.
pub fn write(path: &Path, page: &str) -> Result<(), FigureError> {
    std::fs::write(path, page).map_err(|source| FigureError::Write {
        path: path.display().to_string(),
        source,
    })
}

/// Text made safe for HTML element content and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for ch in text.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            _ => out.push(ch),
        }
    }
    out
}
