//! The loader and every planner under generated and mutated definitions: no panic, no
//! abort, no case over one second.
//!
//! Each case is either *generated* (lines drawn at random from all fixtures, headers
//! included, with random values put in) or *mutated* (a fixture with 1–8 edits: numbers
//! swapped for extremes, lines deleted, duplicated, swapped or borrowed from another
//! fixture, values replaced, bytes flipped, the text cut short). A case that loads is
//! planned for all seven hypervisors, on a KVM host and a TCG host, and rendered.
//!
//! CI runs 300 cases (`FUZZ_CASES`, `FUZZ_SEED`); `scripts/fuzz-long.sh [CASES] [SEED]`
//! runs the same test in a release build with one million by default;
//! docs/benchmarks.md has the last result.
//!
//! A failing case is written to `target/fuzz-failures/` with its seed and case number.

use std::fs;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use microvm_runner::{plan_for, render, Artifacts, HostFacts};
use microvm_spec::config::Arch;
use microvm_spec::load::{load_with, LoadOptions};
use microvm_spec::types::Hypervisor;

/// A small, seedable generator (xorshift64*): reproducible runs without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

const NUMBERS: &[&str] = &[
    "0",
    "1",
    "-1",
    "2",
    "31",
    "32",
    "33",
    "255",
    "256",
    "65535",
    "65536",
    "4294967295",
    "4294967296",
    "2147483648",
    "9223372036854775807",
    "-9223372036854775808",
    "18446744073709551615",
    "1.5",
    "1e308",
    "nan",
    "inf",
];

const VALUES: &[&str] = &[
    "\"\"",
    "\"x\"",
    "\"/\"",
    "\"..\"",
    "\"/a/../b\"",
    "\"a/b\"",
    "\"/dev/null\"",
    "\"eth0\"",
    "\"vm-aaaaaaaaaaaaaaaa\"",
    "\"02:00:00:00:00:01\"",
    "\"ff:ff:ff:ff:ff:ff\"",
    "\"10.0.0.1/33\"",
    "\"::1\"",
    "\"é\\u0000\"",
    "\"`nproc`\"",
    "true",
    "false",
    "[]",
    "[\"a\", \"b\"]",
    "{}",
    "{ a = 1 }",
    "\"qemu\"",
    "\"firecracker\"",
    "\"cloud-hypervisor\"",
    "\"crosvm\"",
    "\"kvmtool\"",
    "\"stratovirt\"",
    "\"alioth\"",
    "\"tap\"",
    "\"macvtap\"",
    "\"user\"",
    "\"bridge\"",
    "\"virtiofs\"",
    "\"9p\"",
    "\"erofs\"",
    "\"squashfs\"",
];

struct Corpus {
    fixtures: Vec<String>,
    lines: Vec<String>,
    /// Holds the fixtures' files and the case (left there after an abort).
    dir: PathBuf,
}

impl Corpus {
    fn new(name: &str) -> Corpus {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures");
        let dir = target().join(name);
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("work dir");
        let mut fixtures = Vec::new();
        for entry in fs::read_dir(&src).expect("fixtures") {
            let path = entry.expect("entry").path();
            // Copy everything, so that relative inputs (root directories, imports) exist.
            if path.is_file() {
                let name = path.file_name().expect("name");
                fs::copy(&path, dir.join(name)).expect("copy");
                if path.extension().is_some_and(|e| e == "toml") {
                    fixtures.push(fs::read_to_string(&path).expect("read"));
                }
            }
        }
        fixtures.sort();
        let lines = fixtures
            .iter()
            .flat_map(|f| f.lines().map(str::to_owned))
            .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
            .collect();
        Corpus {
            fixtures,
            lines,
            dir,
        }
    }

    fn generated(&self, rng: &mut Rng) -> String {
        let mut out = String::new();
        for _ in 0..rng.below(40) {
            let line = rng.pick(&self.lines);
            match (line.split_once(" = "), rng.below(4)) {
                (Some((key, _)), 0) => {
                    out.push_str(&format!("{key} = {}\n", rng.pick(VALUES)));
                }
                (Some((key, _)), 1) => {
                    out.push_str(&format!("{key} = {}\n", rng.pick(NUMBERS)));
                }
                _ => {
                    out.push_str(line);
                    out.push('\n');
                }
            }
        }
        out
    }

    fn mutated(&self, rng: &mut Rng) -> String {
        let mut lines: Vec<String> = rng.pick(&self.fixtures).lines().map(Into::into).collect();
        for _ in 0..1 + rng.below(8) {
            if lines.is_empty() {
                lines.push(rng.pick(&self.lines).clone());
            }
            let i = rng.below(lines.len());
            match rng.below(8) {
                0 => lines[i] = replace_value(&lines[i], pick_str(rng, NUMBERS)),
                1 => lines[i] = replace_value(&lines[i], pick_str(rng, VALUES)),
                2 => {
                    lines.remove(i);
                }
                3 => lines.insert(i, lines[i].clone()),
                4 => {
                    let j = rng.below(lines.len());
                    lines.swap(i, j);
                }
                5 => lines.insert(i, rng.pick(&self.lines).clone()),
                6 => {
                    let mut bytes = lines[i].clone().into_bytes();
                    if !bytes.is_empty() {
                        let k = rng.below(bytes.len());
                        bytes[k] = *rng.pick(b"[]{}=\"'.,#\\\n 0x");
                    }
                    lines[i] = String::from_utf8_lossy(&bytes).into_owned();
                }
                _ => {
                    let cut = rng.below(lines[i].len() + 1);
                    let cut = (0..=cut)
                        .rev()
                        .find(|&c| lines[i].is_char_boundary(c))
                        .unwrap_or(0);
                    lines[i].truncate(cut);
                    lines.truncate(i + 1);
                }
            }
        }
        lines.join("\n") + "\n"
    }
}

fn pick_str(rng: &mut Rng, items: &[&'static str]) -> &'static str {
    items[rng.below(items.len())]
}

fn replace_value(line: &str, value: &str) -> String {
    match line.split_once(" = ") {
        Some((key, _)) => format!("{key} = {value}"),
        None => line.to_owned(),
    }
}

/// Loads `path` and, when it loads, plans and renders it for every hypervisor on a KVM
/// and a TCG host. Returns whether it loaded.
fn load_and_plan(path: &Path, arch: Arch) -> bool {
    let options = LoadOptions {
        arch: Some(arch),
        ..LoadOptions::default()
    };
    let loaded = match load_with(path, &options) {
        Ok(loaded) => loaded,
        Err(failure) => {
            let _ = failure.render();
            return false;
        }
    };
    let tcg = HostFacts {
        kvm: false,
        tsc_khz: Some(2_596_000),
        ..HostFacts::reference()
    };
    for host in [HostFacts::reference(), tcg] {
        for hv in Hypervisor::LINUX {
            let mut config = loaded.config.clone();
            config.hypervisor = hv;
            if let Ok(inv) = plan_for(hv, &config, &Artifacts::placeholders(), &host) {
                let _ = render::render(&inv);
            }
        }
    }
    true
}

struct Outcome {
    cases: u64,
    loaded: u64,
    slowest: Duration,
    elapsed: Duration,
}

fn target() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target")
}

fn run(name: &str, cases: u64, seed: u64) -> Outcome {
    let corpus = Corpus::new(name);
    let mut rng = Rng(seed | 1);
    let start = Instant::now();
    let mut outcome = Outcome {
        cases: 0,
        loaded: 0,
        slowest: Duration::ZERO,
        elapsed: Duration::ZERO,
    };
    let path = corpus.dir.join("fuzz-case.toml");
    for case in 0..cases {
        let text = if rng.below(3) == 0 {
            corpus.generated(&mut rng)
        } else {
            corpus.mutated(&mut rng)
        };
        let arch = if rng.below(8) == 0 {
            Arch::Aarch64
        } else {
            Arch::X86_64
        };
        fs::write(&path, &text).expect("write case");
        let t = Instant::now();
        let result = catch_unwind(AssertUnwindSafe(|| load_and_plan(&path, arch)));
        let took = t.elapsed();
        match result {
            Ok(loaded) => outcome.loaded += u64::from(loaded),
            Err(_) => fail(seed, case, &text, "panicked"),
        }
        if took > Duration::from_secs(1) {
            fail(seed, case, &text, &format!("took {took:?}"));
        }
        outcome.slowest = outcome.slowest.max(took);
        outcome.cases += 1;
        if case > 0 && case % 100_000 == 0 {
            eprintln!("fuzz: {case} cases in {:.0?}", start.elapsed());
        }
    }
    outcome.elapsed = start.elapsed();
    let _ = fs::remove_dir_all(&corpus.dir);
    eprintln!(
        "fuzz: {} cases ({} loaded and planned ×14) in {:.1?}, slowest {:.1?}, seed {seed}",
        outcome.cases, outcome.loaded, outcome.elapsed, outcome.slowest
    );
    outcome
}

fn fail(seed: u64, case: u64, text: &str, what: &str) -> ! {
    let dir = target().join("fuzz-failures");
    let _ = fs::create_dir_all(&dir);
    let file: PathBuf = dir.join(format!("seed{seed}-case{case}.toml"));
    let _ = fs::write(&file, text);
    panic!(
        "case {case} of seed {seed} {what}; its input is in {}",
        file.display()
    );
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// 300 cases in CI; `scripts/fuzz-long.sh` runs the same test with a million
/// (`FUZZ_CASES`, `FUZZ_SEED`), its failing inputs kept under `fuzz-long`.
#[test]
fn fuzz_definitions_and_plans() {
    let cases = env_u64("FUZZ_CASES", 300);
    let label = if cases > 10_000 {
        "fuzz-long"
    } else {
        "fuzz-short"
    };
    let outcome = run(label, cases, env_u64("FUZZ_SEED", 1));
    assert!(
        outcome.loaded > 0,
        "no generated case loaded: the corpus is broken"
    );
}
