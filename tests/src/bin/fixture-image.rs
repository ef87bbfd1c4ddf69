//! Writes the standard busybox test image (from Debian's busybox-static) as an OCI layout:
//! `fixture-image OUT_DIR [TAG]`. The README's demo imports it with `nodeagent ctr image import`.

use anyhow::{bail, Result};

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let Some(out) = args.next().filter(|a| !a.starts_with('-')) else {
        bail!("usage: fixture-image OUT_DIR [TAG]");
    };
    let tag = args.next().unwrap_or_else(|| "latest".into());
    let arch = flotilla_tests::host_arch();
    let out = std::path::Path::new(&out);
    std::fs::create_dir_all(out)?;
    let img = flotilla_tests::image::write_layout(
        out,
        &tag,
        &flotilla_tests::image::busybox_image(arch),
    )?;
    println!(
        "wrote OCI layout {} (tag {tag}, manifest {})",
        out.display(),
        img.manifest
    );
    Ok(())
}
