//! Sealing and opening speed of 64 KiB blocks, the size of a file block: ate's two payload
//! ciphers (format 1's XChaCha20-Poly1305 and format 2's AES-256-GCM, each with its
//! per-payload subkey) against the bare AEADs ring offers, on this machine. Prints MiB/s per
//! run and the median. Usage: aead-bench [RUNS]

use ate::{Cipher, DataKey};
use ring::aead::{
    Aad, Algorithm, LessSafeKey, Nonce, UnboundKey, AES_128_GCM, AES_256_GCM, CHACHA20_POLY1305,
};
use std::time::Instant;

const BLOCK: usize = 64 << 10;
const BLOCKS: usize = 8192; // 512 MiB

fn mib_per_s(seal_all: impl FnOnce()) -> f64 {
    let t = Instant::now();
    seal_all();
    (BLOCK * BLOCKS) as f64 / (1 << 20) as f64 / t.elapsed().as_secs_f64()
}

fn ate_seal(cipher: Cipher) -> f64 {
    let key = DataKey::generate();
    let plain = vec![1u8; BLOCK];
    let mut out = vec![0u8; BLOCK + ate::crypto::SEAL_OVERHEAD];
    mib_per_s(|| {
        for _ in 0..BLOCKS {
            key.seal_into(cipher, b"header", &plain, &mut out);
            std::hint::black_box(&out);
        }
    })
}

/// Opening includes copying the sealed block into the buffer it is opened in, as a read of
/// a block from the log does.
fn ate_open(cipher: Cipher) -> anyhow::Result<f64> {
    let key = DataKey::generate();
    let sealed = key.seal(cipher, b"header", &vec![1u8; BLOCK]);
    let mut failed = false;
    let rate = mib_per_s(|| {
        for _ in 0..BLOCKS {
            match key.open(cipher, b"header", sealed.clone()) {
                Ok(p) => {
                    std::hint::black_box(&p);
                }
                Err(_) => failed = true,
            }
        }
    });
    anyhow::ensure!(!failed, "opening failed");
    Ok(rate)
}

fn ring_seal(alg: &'static Algorithm) -> anyhow::Result<f64> {
    let key_bytes = vec![7u8; alg.key_len()];
    let key = LessSafeKey::new(
        UnboundKey::new(alg, &key_bytes).map_err(|_| anyhow::anyhow!("bad key length"))?,
    );
    let mut buf = vec![1u8; BLOCK];
    let mut failed = false;
    let rate = mib_per_s(|| {
        for i in 0..BLOCKS {
            let mut n = [0u8; 12];
            n[..8].copy_from_slice(&(i as u64).to_le_bytes());
            let nonce = Nonce::assume_unique_for_key(n);
            match key.seal_in_place_separate_tag(nonce, Aad::from(b"header"), &mut buf) {
                Ok(tag) => {
                    std::hint::black_box(&tag);
                }
                Err(_) => failed = true,
            }
        }
    });
    anyhow::ensure!(!failed, "sealing failed");
    Ok(rate)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> anyhow::Result<()> {
    let runs: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(3)
        .max(1);
    let mut rows: Vec<(&str, Vec<f64>)> = vec![
        ("ate seal XChaCha20-Poly1305 (format 1)", vec![]),
        ("ate seal AES-256-GCM (format 2)", vec![]),
        ("ate open XChaCha20-Poly1305 (format 1)", vec![]),
        ("ate open AES-256-GCM (format 2)", vec![]),
        ("ring seal ChaCha20-Poly1305", vec![]),
        ("ring seal AES-256-GCM", vec![]),
        ("ring seal AES-128-GCM", vec![]),
    ];
    // Interleaved, so that the machine's moods fall on every row alike.
    for _ in 0..runs {
        rows[0].1.push(ate_seal(Cipher::XChaCha20Poly1305));
        rows[1].1.push(ate_seal(Cipher::Aes256Gcm));
        rows[2].1.push(ate_open(Cipher::XChaCha20Poly1305)?);
        rows[3].1.push(ate_open(Cipher::Aes256Gcm)?);
        rows[4].1.push(ring_seal(&CHACHA20_POLY1305)?);
        rows[5].1.push(ring_seal(&AES_256_GCM)?);
        rows[6].1.push(ring_seal(&AES_128_GCM)?);
    }
    for (name, v) in rows {
        let runs: Vec<String> = v.iter().map(|r| format!("{r:.0}")).collect();
        println!(
            "{name}: {} MiB/s, median {:.0}",
            runs.join(" / "),
            median(v)
        );
    }
    Ok(())
}
