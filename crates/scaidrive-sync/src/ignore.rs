//! Ignore patterns: simple globs (`*`, `?`) matched against a file's name. Defaults cover
//! Office lock files, OS metadata and editor temp files; `DIR/.scaidrive/ignore` (one pattern
//! per line) replaces them when present.

use std::path::Path;

pub const DEFAULTS: &[&str] = &[
    "~$*",
    ".DS_Store",
    "Thumbs.db",
    "desktop.ini",
    "*.tmp",
    "*.swp",
    "*.swx",
    "*~",
    ".~lock.*",
    "*.part",
    "*.crdownload",
];

#[derive(Debug, Clone)]
pub struct Ignore {
    patterns: Vec<String>,
}

impl Ignore {
    pub fn defaults() -> Ignore {
        Ignore {
            patterns: DEFAULTS.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// Patterns from `file` (blank lines and `#` comments skipped), else the defaults.
    pub fn load(file: &Path) -> Ignore {
        match std::fs::read_to_string(file) {
            Ok(s) => Ignore {
                patterns: s
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .map(str::to_string)
                    .collect(),
            },
            Err(_) => Ignore::defaults(),
        }
    }

    /// True when any component of the share path `p` (`/a/b.txt`) matches.
    pub fn ignored(&self, p: &str) -> bool {
        p.split('/').filter(|s| !s.is_empty()).any(|name| {
            self.patterns
                .iter()
                .any(|pat| glob(pat.as_bytes(), name.as_bytes()))
        })
    }
}

fn glob(p: &[u8], s: &[u8]) -> bool {
    match (p.first(), s.first()) {
        (None, None) => true,
        (Some(b'*'), _) => glob(&p[1..], s) || (!s.is_empty() && glob(p, &s[1..])),
        (Some(b'?'), Some(_)) => glob(&p[1..], &s[1..]),
        (Some(a), Some(b)) if a == b => glob(&p[1..], &s[1..]),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn patterns() {
        let i = super::Ignore::defaults();
        assert!(i.ignored("/docs/~$report.docx"));
        assert!(i.ignored("/.DS_Store"));
        assert!(i.ignored("/a/x.tmp"));
        assert!(i.ignored("/a/.~lock.x.odt#"));
        assert!(!i.ignored("/a/report.docx"));
        assert!(!i.ignored("/tmp/x.txt"));
    }
}
