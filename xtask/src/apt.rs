//! The Debian mirror this machine's apt already uses, read from its sources: the one-line
//! format (`/etc/apt/sources.list`, `sources.list.d/*.list`) and deb822 (`sources.list.d/*.sources`).
//! Every root the project builds with debootstrap comes from it; no mirror is named in the project.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// The URI of the first enabled `deb` source that serves this machine's Debian release
/// (`VERSION_CODENAME` in /etc/os-release); that mirror serves the other releases too.
pub fn mirror() -> Result<String> {
    let os_release = std::fs::read_to_string("/etc/os-release").context("read /etc/os-release")?;
    let codename = os_release
        .lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .map(|c| c.trim_matches('"').to_string())
        .filter(|c| !c.is_empty())
        .context("/etc/os-release names no VERSION_CODENAME: not a Debian release")?;
    let files = source_files();
    let mut sources = vec![];
    for file in &files {
        let text = std::fs::read_to_string(file).with_context(|| format!("read {}", file.display()))?;
        sources.extend(if file.extension().is_some_and(|e| e == "sources") { deb822(&text) } else { one_line(&text) });
    }
    match sources.into_iter().find(|s| s.suites.contains(&codename)) {
        Some(source) => Ok(source.uri),
        None => bail!(
            "no Debian mirror in this machine's apt sources: none of {} has an enabled `deb` entry for \
             {codename}; add one (e.g. in /etc/apt/sources.list.d/debian.sources) that names your mirror",
            files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>().join(", ")
        ),
    }
}

/// /etc/apt/sources.list, then sources.list.d's `*.list` and `*.sources` in name order, as apt reads them.
fn source_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir("/etc/apt/sources.list.d")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "list" || e == "sources"))
        .collect();
    files.sort();
    files.insert(0, Path::new("/etc/apt/sources.list").to_path_buf());
    files.retain(|p| p.is_file());
    files
}

/// One enabled binary-package source: where, and which suites.
#[derive(Debug, PartialEq)]
struct Source {
    uri: String,
    suites: Vec<String>,
}

/// `deb [options] URI SUITE [COMPONENT…]` lines; comments and `deb-src` lines skipped.
fn one_line(text: &str) -> Vec<Source> {
    text.lines()
        .filter_map(|line| {
            let line = line.split('#').next()?.trim();
            let rest = line.strip_prefix("deb")?.strip_prefix([' ', '\t'])?.trim_start();
            let rest = match rest.strip_prefix('[') {
                Some(options) => options.split_once(']')?.1,
                None => rest,
            };
            let mut words = rest.split_whitespace();
            Some(Source { uri: words.next()?.to_string(), suites: vec![words.next()?.to_string()] })
        })
        .collect()
}

/// deb822 stanzas (`Types:`, `URIs:`, `Suites:`, `Enabled:`), separated by blank lines; one
/// source per URI of a stanza whose types include `deb`.
fn deb822(text: &str) -> Vec<Source> {
    let mut sources = vec![];
    for stanza in text.split("\n\n") {
        let field = |name: &str| {
            stanza.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
                let (key, value) = l.split_once(':')?;
                key.trim().eq_ignore_ascii_case(name).then(|| value.split_whitespace().map(str::to_string).collect())
            })
        };
        let types: Vec<String> = field("Types").unwrap_or_default();
        let enabled: Vec<String> = field("Enabled").unwrap_or_default();
        if !types.iter().any(|t| t == "deb") || enabled.first().is_some_and(|e| e == "no") {
            continue;
        }
        let suites: Vec<String> = field("Suites").unwrap_or_default();
        for uri in field("URIs").unwrap_or_default() {
            sources.push(Source { uri, suites: suites.clone() });
        }
    }
    sources
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(uri: &str, suites: &[&str]) -> Source {
        Source { uri: uri.to_string(), suites: suites.iter().map(|s| s.to_string()).collect() }
    }

    #[test]
    fn one_line_sources_skip_comments_options_and_deb_src() {
        let text = "# deb http://old/debian bookworm main\n\
                    deb-src http://src/debian bookworm main\n\
                    deb [arch=amd64 signed-by=/k.gpg] http://mirror/debian bookworm main # local\n\
                    deb http://mirror/debian-security bookworm-security main\n";
        assert_eq!(
            one_line(text),
            [
                source("http://mirror/debian", &["bookworm"]),
                source("http://mirror/debian-security", &["bookworm-security"])
            ]
        );
    }

    #[test]
    fn deb822_stanzas_give_one_source_per_uri_and_skip_disabled_ones() {
        let text = "Types: deb deb-src\n# a comment: here\nURIs: http://a/debian http://b/debian\n\
                    Suites: bookworm bookworm-updates\nComponents: main\n\n\
                    Types: deb\nURIs: http://c/debian\nSuites: bookworm\nEnabled: no\n\n\
                    Types: deb-src\nURIs: http://d/debian\nSuites: bookworm\n";
        let suites = &["bookworm", "bookworm-updates"];
        assert_eq!(deb822(text), [source("http://a/debian", suites), source("http://b/debian", suites)]);
    }
}
