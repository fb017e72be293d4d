{
  description = "raftkv: a replicated key/value store on Raft; static binaries, OCI images and the Kubernetes dev loop";

  # flake.lock pins nixos-26.05 (rustc 1.95): keep the workspace rust-version at or
  # below it (asserted below). nixpkgs 26.05 needs Nix >= 2.18.
  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-26.05";
  # crane builds the dependency crates once, in a derivation of their own
  # (buildDepsOnly), and the workspace on top of them (cargoArtifacts), so an edit under
  # crates/ rebuilds only the workspace. It has no inputs of its own.
  inputs.crane.url = "github:ipetkov/crane/v0.23.4";

  outputs =
    {
      self,
      nixpkgs,
      crane,
    }:
    let
      inherit (nixpkgs) lib;

      # Linux only: the images are Linux images and the tests need Linux (namespaces,
      # /proc). A darwin machine builds through a Linux builder.
      systems = [
        "x86_64-linux"
        "aarch64-linux"
      ];
      forAllSystems = f: lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});

      cargoToml = lib.importTOML ./Cargo.toml;
      version = cargoToml.workspace.package.version;
      msrv = cargoToml.workspace.package.rust-version;

      # Only what cargo reads, so editing k8s/, the Tiltfile or a script rebuilds nothing.
      src = lib.fileset.toSource {
        root = ./.;
        fileset = lib.fileset.unions [
          ./Cargo.toml
          ./Cargo.lock
          ./rustfmt.toml
          ./crates
          ./tests/Cargo.toml
          ./tests/src
          ./tests/tests
        ];
      };

      checkMsrv =
        rustc:
        if builtins.compareVersions rustc.version msrv < 0 then
          throw "nixpkgs' rustc ${rustc.version} is older than the workspace rust-version ${msrv}"
        else
          true;

      # What every crane derivation here shares. pname and version are given because
      # the workspace root's Cargo.toml has no [package].
      commonArgs = {
        inherit src version;
        strictDeps = true;
      };

      # Static (musl) raftkv-server and raftkv. Not crane on pkgsStatic: its stdenv
      # links build scripts and proc macros statically too. Instead cargo runs on
      # glibc and cross-compiles the binaries to musl with the cross rustc of
      # pkgsStatic (which ships std for both), linking with pkgsStatic's cc.
      staticFor =
        pkgs:
        let
          static = pkgs.pkgsStatic;
          craneLib = (crane.mkLib pkgs).overrideScope (
            _final: _prev: {
              inherit (static.buildPackages) rustc clippy;
            }
          );
          target = static.stdenv.hostPlatform.rust.rustcTarget;
          targetEnv = lib.toUpper (builtins.replaceStrings [ "-" ] [ "_" ] target);
          cc = "${static.stdenv.cc}/bin/${static.stdenv.cc.targetPrefix}cc";
          args = commonArgs // {
            pname = "raftkv";
            cargoExtraArgs = "--locked --package raftkv-server --package raftkv";
            # The tests run in checks.<system>.tests (glibc): a static test binary gains nothing.
            doCheck = false;
            CARGO_BUILD_TARGET = target;
            "CARGO_TARGET_${targetEnv}_LINKER" = cc;
            # For the cc crate (ring's C and assembly).
            TARGET_CC = cc;
            TARGET_AR = "${static.stdenv.cc.bintools}/bin/${static.stdenv.cc.targetPrefix}ar";
          };
          deps = craneLib.buildDepsOnly args;
        in
        assert checkMsrv static.buildPackages.rustc;
        {
          inherit deps;
          raftkv = craneLib.buildPackage (
            args
            // {
              cargoArtifacts = deps;
              meta = {
                description = "raftkv server and CLI, statically linked";
                mainProgram = "raftkv";
              };
            }
          );
        };

      # `cargo test --workspace` in a regular glibc build, on dependencies of its own
      # (the workspace's dev-dependencies and the etcd benchmark crate's). Tests that
      # need root, namespaces or Docker print a SKIPPED line with the reason; the
      # check lists them at its end and in $out/skipped.txt.
      testsFor =
        pkgs:
        let
          craneLib = crane.mkLib pkgs;
          args = commonArgs // {
            pname = "raftkv-workspace";
            cargoExtraArgs = "--locked --workspace";
            # etcd-client's build script (crates/bench/etcd) runs protoc.
            nativeBuildInputs = [ pkgs.protobuf ];
          };
          deps = craneLib.buildDepsOnly args;
        in
        assert checkMsrv pkgs.rustc;
        {
          inherit deps;
          tests = craneLib.mkCargoDerivation (
            args
            // {
              cargoArtifacts = deps;
              pnameSuffix = "-tests";
              doInstallCargoArtifacts = false;
              # The executables the integration tests start, built here so the tests
              # find them fresh in the same target directory.
              buildPhaseCargoCommand = "cargoWithProfile build --locked --package raftkv-server --package raftkv";
              doCheck = true;
              # The partition tests' tools: without root they still cannot create
              # namespaces, and say SKIPPED with that reason.
              nativeCheckInputs = [
                pkgs.iproute2
                pkgs.iptables
              ];
              # --show-output: libtest hides a passing test's output, SKIPPED lines included.
              checkPhaseCargoCommand = ''
                status=0
                cargoWithProfile test --locked --workspace -- --show-output 2>&1 | tee cargo-test.log || status=$?
                grep -o 'SKIPPED .*' cargo-test.log | sort -u > skipped.txt || true
                echo "==> tests SKIPPED in the Nix sandbox (no root, namespaces or Docker here): $(wc -l < skipped.txt)"
                sed 's/^/    /' skipped.txt
                [ "$status" = 0 ] || { echo "cargo test failed (exit $status)"; exit "$status"; }
              '';
              installPhaseCommand = ''
                mkdir -p "$out"
                cp cargo-test.log skipped.txt "$out"/
              '';
            }
          );
        };

      # The image's root besides the binaries: a passwd/group that names uid 65532,
      # /tmp and /data. No shell and no package manager: the image holds raftkv's
      # closure (one static package) and these files only.
      rootFiles = ''
        mkdir -p etc tmp data
        chmod 1777 tmp
        printf 'root:x:0:0:root:/:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/data:/sbin/nologin\n' > etc/passwd
        printf 'root:x:0:\nnonroot:x:65532:\n' > etc/group
      '';

      # `nix build .#server-image` makes a script that streams a docker-archive tar to
      # stdout: `./result | docker load`, or `./result | skopeo copy docker-archive:/dev/stdin docker://REF`.
      imageFor =
        pkgs: raftkv:
        {
          name,
          entrypoint,
          ports,
        }:
        pkgs.dockerTools.streamLayeredImage {
          inherit name;
          tag = "dev";
          # Reproducible: a fixed creation date (and so the same digest for the same inputs).
          created = "1970-01-01T00:00:01Z";
          contents = [ raftkv ];
          extraCommands = rootFiles;
          fakeRootCommands = ''
            chown 65532:65532 data
            chmod 0700 data
          '';
          config = {
            # Must match k8s/: the manifests give only args, never a command.
            Entrypoint = [ entrypoint ];
            User = "65532:65532";
            WorkingDir = "/data";
            ExposedPorts = builtins.listToAttrs (
              map (p: {
                name = "${toString p}/tcp";
                value = { };
              }) ports
            );
            Labels = {
              "org.opencontainers.image.title" = name;
              "org.opencontainers.image.version" = version;
              "org.opencontainers.image.licenses" = cargoToml.workspace.package.license;
            };
          };
        };

      # Streams the image, unpacks it and runs its entrypoint with --version inside the
      # sandbox; checks the user (65532), /data (65532:65532, 0700) and that the
      # entrypoint is a static executable (the image has no libc).
      imageCheckFor =
        pkgs: name: image: entrypoint:
        pkgs.runCommand "${name}-check"
          {
            nativeBuildInputs = [ pkgs.python3 ];
          }
          ''
            ${image} > image.tar
            python3 ${./nix/check_image.py} image.tar \
              --entrypoint ${entrypoint} --version ${version} --uid 65532 --data-mode 0700
            touch "$out"
          '';

      images =
        pkgs:
        let
          raftkv = (staticFor pkgs).raftkv;
        in
        {
          # 6000: Raft and client RPC; 9090: /livez, /readyz, /metrics.
          server-image = imageFor pkgs raftkv {
            name = "raftkv-server";
            entrypoint = "/bin/raftkv-server";
            ports = [
              6000
              9090
            ];
          };
          client-image = imageFor pkgs raftkv {
            name = "raftkv-client";
            entrypoint = "/bin/raftkv";
            ports = [ ];
          };
        };
    in
    {
      packages = forAllSystems (
        pkgs:
        let
          static = staticFor pkgs;
        in
        {
          inherit (static) raftkv;
          default = static.raftkv;
          # The dependency crates alone: what an edit under crates/ must not rebuild.
          raftkv-deps = static.deps;
        }
        // images pkgs
      );

      checks = forAllSystems (
        pkgs:
        let
          system = pkgs.stdenv.hostPlatform.system;
          built = images pkgs;
        in
        {
          inherit (testsFor pkgs) tests;
          raftkv = self.packages.${system}.raftkv;
          server-image = imageCheckFor pkgs "raftkv-server-image" built.server-image "/bin/raftkv-server";
          client-image = imageCheckFor pkgs "raftkv-client-image" built.client-image "/bin/raftkv";
        }
      );

      devShells = forAllSystems (pkgs: {
        default = pkgs.mkShell {
          packages = [
            # Rust (nixpkgs' toolchain: rustc >= the workspace rust-version).
            pkgs.cargo
            pkgs.rustc
            pkgs.clippy
            pkgs.rustfmt
            # etcd-client's build script (crates/bench/etcd, built by cargo test --workspace).
            pkgs.protobuf
            # The partition tests (run as root): network namespaces, veth pairs, DROP rules.
            pkgs.iproute2
            pkgs.iptables
            # The Kubernetes dev loop (k8s/kind/up, Tiltfile, tests/e2e/kind.sh).
            pkgs.kind
            pkgs.kubectl
            pkgs.tilt
            pkgs.skopeo
            pkgs.docker-client
            pkgs.jq
            pkgs.curl
            pkgs.git
            # The offline checks and the container rehearsal (tests/offline, tests/docker).
            pkgs.python3
            pkgs.shellcheck
            pkgs.nixfmt
          ];
          shellHook = ''
            echo "raftkv dev shell: k8s/kind/up, then tilt up (see k8s/README.md)"
          '';
        };
      });

      # nixfmt (RFC 166 style): `nix fmt`.
      formatter = forAllSystems (pkgs: pkgs.nixfmt);
    };
}
