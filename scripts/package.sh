#!/usr/bin/env bash
# Builds rollout_VERSION_amd64.deb (README: "Install from the Debian package").
#
#   scripts/package.sh [OUTPUT_DIR]      default OUTPUT_DIR: target/package
#
# A staged tree packed by dpkg-deb rather than cargo-deb: half the package is
# made here, not by cargo (the installer initramfs built from this host's kernel,
# the man pages and completions the binary generates, the md5sums), cargo-deb
# would be one more tool to install, and every path and mode stays in view below.
#
# What it builds, with `nice`:
#   - the installer (musl, release) in the usual target/, as scripts/test.sh does;
#   - the server (release) in its own CARGO_TARGET_DIR, target/package, with
#     ROLLOUT_LIBDIR=/usr/lib/rollout compiled in (where it finds the packaged
#     installer and boot files); later runs reuse it;
#   - the installer initramfs and kernel, from this host's Debian packages
#     (linux-image-amd64, rsync, extlinux, … see scripts/setup.sh).
# Needs dpkg-deb, dpkg-shlibdeps (dpkg-dev), strip (binutils), gzip.
set -euo pipefail
cd "$(dirname "$0")/.."
source "$HOME/.cargo/env" 2>/dev/null || true

out=$(realpath -m "${1:-target/package}")
libdir=/usr/lib/rollout
cargo_target="$PWD/target/package"
deb_src=packaging/debian

version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
changelog_version=$(sed -n '1s/^rollout (\([^)]*\)).*/\1/p' "$deb_src/changelog")
if [ "$version" != "$changelog_version" ]; then
  echo "package: Cargo.toml says $version but $deb_src/changelog's newest entry is $changelog_version; add a changelog entry" >&2
  exit 1
fi
for tool in dpkg-deb dpkg-shlibdeps strip gzip; do
  command -v "$tool" >/dev/null || { echo "package: $tool is missing (scripts/setup.sh installs it)" >&2; exit 1; }
done

# ROLLOUT_PACKAGE_PROFILE=package-ci (scripts/test.sh): the server built without
# optimisation, so CI checks the package's making, contents, lint, install and
# service in minutes instead of a release build of every dependency; what ships
# is built with the default, release.
profile=${ROLLOUT_PACKAGE_PROFILE:-release}
echo "package: building the installer (release) and the server ($profile)"
nice -n 10 cargo build --quiet --release -p rollout-installer --target x86_64-unknown-linux-musl
ROLLOUT_LIBDIR=$libdir CARGO_TARGET_DIR=$cargo_target \
  nice -n 10 cargo build --quiet --profile "$profile" -p rollout --bin rollout
rollout_bin="$cargo_target/$profile/rollout"
installer_bin="$PWD/target/x86_64-unknown-linux-musl/release/rollout-installer"

stage="$out/stage"
rm -rf "$stage"
mkdir -p "$stage/DEBIAN"
d() { install -d -m 0755 "$stage/$1"; }
d usr/bin
d "$libdir/boot"
d lib/systemd/system
d etc/rollout
d usr/share/man/man1
d usr/share/bash-completion/completions
d usr/share/zsh/vendor-completions
d usr/share/doc/rollout
d usr/share/lintian/overrides

# What dh_strip does: no symbols, no .comment/.note sections.
install -m 0755 "$rollout_bin" "$stage/usr/bin/rollout"
install -m 0755 "$installer_bin" "$stage/$libdir/rollout-installer"
strip --remove-section=.comment --remove-section=.note --strip-unneeded \
  "$stage/usr/bin/rollout" "$stage/$libdir/rollout-installer"

echo "package: building the installer initramfs (this host's kernel and tools)"
# `rollout initramfs build` reads state_dir from a config; --output overrides it.
tmp_config=$(mktemp)
trap 'rm -f "$tmp_config"' EXIT
echo 'state_dir = "/nonexistent"' >"$tmp_config"
"$stage/usr/bin/rollout" --config "$tmp_config" initramfs build \
  --installer "$stage/$libdir/rollout-installer" --output "$stage/$libdir/boot" |
  sed 's/^/  /'
chmod 0644 "$stage/$libdir/boot/"*

install -m 0644 "$deb_src/rollout.service" "$stage/lib/systemd/system/rollout.service"
install -m 0644 "$deb_src/rollout.toml" "$stage/etc/rollout/rollout.toml"
echo /etc/rollout/rollout.toml >"$stage/DEBIAN/conffiles"

# Man pages and completions from the CLI's own definition.
"$stage/usr/bin/rollout" generate man "$stage/usr/share/man/man1"
gzip -9n "$stage/usr/share/man/man1/"*.1
chmod 0644 "$stage/usr/share/man/man1/"*
"$stage/usr/bin/rollout" generate completions bash >"$stage/usr/share/bash-completion/completions/rollout"
"$stage/usr/bin/rollout" generate completions zsh >"$stage/usr/share/zsh/vendor-completions/_rollout"
chmod 0644 "$stage/usr/share/bash-completion/completions/rollout" "$stage/usr/share/zsh/vendor-completions/_rollout"

install -m 0644 "$deb_src/copyright" "$stage/usr/share/doc/rollout/copyright"
gzip -9nc "$deb_src/changelog" >"$stage/usr/share/doc/rollout/changelog.gz"
chmod 0644 "$stage/usr/share/doc/rollout/changelog.gz"
install -m 0644 "$deb_src/lintian-overrides" "$stage/usr/share/lintian/overrides/rollout"
install -m 0755 "$deb_src/postinst" "$deb_src/prerm" "$deb_src/postrm" "$stage/DEBIAN/"

# Shared-library dependencies of the one dynamic binary, as dh_shlibdeps finds them
# (dpkg-shlibdeps wants a debian/control to read; it is a scratch one).
shlibs_dir=$(mktemp -d)
trap 'rm -f "$tmp_config"; rm -rf "$shlibs_dir"' EXIT
mkdir "$shlibs_dir/debian"
printf 'Source: rollout\n\nPackage: rollout\nArchitecture: amd64\n' >"$shlibs_dir/debian/control"
shlibs=$(cd "$shlibs_dir" && dpkg-shlibdeps -O "$stage/usr/bin/rollout" | sed -n 's/^shlibs:Depends=//p')

installed_size=$(du -sk --exclude=DEBIAN "$stage" | cut -f1)
cat >"$stage/DEBIAN/control" <<EOF
Package: rollout
Version: $version
Architecture: amd64
Maintainer: rollout developers <rollout@example.org>
Installed-Size: $installed_size
Depends: $shlibs, ipxe, rsync, syslinux-common, extlinux, openssh-client, udpcast, e2fsprogs
Recommends: debootstrap, linux-image-amd64, e2fsprogs, dosfstools, busybox-static, systemd-boot-efi, mdadm, lvm2, xfsprogs
Suggests: ipmitool
Section: admin
Priority: optional
Description: network-boot provisioning for racks of blank machines
 rollout serves DHCP (full, proxy and relayed), TFTP and HTTP from one daemon:
 blank machines PXE-boot into a Rust installer that partitions their disk,
 rsyncs a golden image, configures it and reboots into the installed OS.
 Installed nodes are kept up to date from new image serials.
 .
 The package ships the daemon (rollout.service, off until configured), the
 installer initramfs and kernel built at package time, and uses Debian's
 iPXE and syslinux files.
EOF

(cd "$stage" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | sort -z | xargs -0 md5sum) \
  >"$stage/DEBIAN/md5sums"
chmod 0644 "$stage/DEBIAN/control" "$stage/DEBIAN/md5sums" "$stage/DEBIAN/conffiles"

deb="$out/rollout_${version}_amd64.deb"
dpkg-deb --root-owner-group -Zxz --build "$stage" "$deb" >/dev/null
rm -rf "$stage"
echo "package: $deb ($(du -h "$deb" | cut -f1))"
