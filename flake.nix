{
  description = "raftkv: a replicated key/value store on Raft; static binaries, OCI images and the Kubernetes dev loop";

  # The only input. flake.lock pins nixos-26.05 (rustc 1.95): keep the workspace
  # rust-version at or below it (asserted below).
  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-26.05";

  outputs = { self, nixpkgs }:
    let
      systems = [ "x86_64-linux" "aarch64-linux" ];
      forAllSystems = f: builtins.listToAttrs (map (system: {
        name = system;
        value = f system nixpkgs.legacyPackages.${system};
      }) systems);

      cargoToml = builtins.fromTOML (builtins.readFile ./Cargo.toml);
      version = cargoToml.workspace.package.version;
      msrv = cargoToml.workspace.package.rust-version;

      # Only what cargo reads, so editing k8s/, the Tiltfile or a script rebuilds nothing.
      hasPrefix = p: s: builtins.substring 0 (builtins.stringLength p) s == p;
      src = builtins.path {
        name = "raftkv-source";
        path = ./.;
        filter = path: type:
          let
            root = toString ./. + "/";
            rel = builtins.substring (builtins.stringLength root) (builtins.stringLength (toString path)) (toString path);
          in
          builtins.elem rel [ "Cargo.toml" "Cargo.lock" "rustfmt.toml" "crates" "tests" "tests/Cargo.toml" ]
          || hasPrefix "crates/" rel
          || hasPrefix "tests/src" rel
          || hasPrefix "tests/tests" rel;
      };

      checkMsrv = pkgs:
        if builtins.compareVersions pkgs.rustc.version msrv < 0
        then throw "nixpkgs' rustc ${pkgs.rustc.version} is older than the workspace rust-version ${msrv}"
        else true;

      # Static (musl) raftkv-server and raftkv, built from Cargo.lock.
      raftkvFor = pkgs:
        assert checkMsrv pkgs;
        pkgs.pkgsStatic.rustPlatform.buildRustPackage {
          pname = "raftkv";
          inherit version src;
          cargoLock.lockFile = ./Cargo.lock;
          cargoBuildFlags = [ "--package" "raftkv-server" "--package" "raftkv" ];
          # The tests run in checks.<system>.tests (a regular build): a static test
          # binary gains nothing.
          doCheck = false;
          meta = {
            description = "raftkv server and CLI, statically linked";
            mainProgram = "raftkv";
          };
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
      imageFor = pkgs: raftkv: { name, entrypoint, ports }:
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
            ExposedPorts = builtins.listToAttrs (map (p: { name = "${toString p}/tcp"; value = { }; }) ports);
            Labels = {
              "org.opencontainers.image.title" = name;
              "org.opencontainers.image.version" = version;
              "org.opencontainers.image.licenses" = cargoToml.workspace.package.license;
            };
          };
        };
    in
    {
      packages = forAllSystems (system: pkgs:
        let raftkv = raftkvFor pkgs;
        in {
          inherit raftkv;
          default = raftkv;
          # 6000: Raft and client RPC; 9090: /livez, /readyz, /metrics.
          server-image = imageFor pkgs raftkv { name = "raftkv-server"; entrypoint = "/bin/raftkv-server"; ports = [ 6000 9090 ]; };
          client-image = imageFor pkgs raftkv { name = "raftkv-client"; entrypoint = "/bin/raftkv"; ports = [ ]; };
        });

      checks = forAllSystems (system: pkgs: {
        # The workspace tests (cargo test --workspace), in a regular glibc build.
        tests = assert checkMsrv pkgs;
          pkgs.rustPlatform.buildRustPackage {
            pname = "raftkv-tests";
            inherit version src;
            cargoLock.lockFile = ./Cargo.lock;
            cargoBuildFlags = [ "--workspace" ];
            cargoTestFlags = [ "--workspace" ];
            doCheck = true;
          };
        # The static package and both images build.
        raftkv = self.packages.${system}.raftkv;
        server-image = self.packages.${system}.server-image;
        client-image = self.packages.${system}.client-image;
      });

      devShells = forAllSystems (system: pkgs: {
        default = pkgs.mkShell {
          packages = [
            # Rust (nixpkgs' toolchain: rustc >= the workspace rust-version).
            pkgs.cargo
            pkgs.rustc
            pkgs.clippy
            pkgs.rustfmt
            # The Kubernetes dev loop (k8s/kind/up, Tiltfile, tests/e2e/kind.sh).
            pkgs.kind
            pkgs.kubectl
            pkgs.tilt
            pkgs.skopeo
            pkgs.docker-client
            pkgs.jq
            pkgs.curl
            # The offline checks and the container rehearsal (tests/offline, tests/docker).
            pkgs.python3
            pkgs.shellcheck
          ];
          shellHook = ''
            echo "raftkv dev shell: k8s/kind/up, then tilt up (see k8s/README.md)"
          '';
        };
      });

      formatter = forAllSystems (system: pkgs: pkgs.nixpkgs-fmt);
    };
}
