# A stand-in for nixpkgs' package set (nixos-26.05), for evaluating flake.nix offline
# (tests/offline/test_flake.py). Not a build: nothing here can be realised.
#
# Real: `lib` (nixpkgs' own lib/ of 26.05, passed in), and with it the platforms
# (lib.systems.elaborate), the scopes crane builds on (lib.makeScopeWithSplicing',
# lib.callPackageWith, lib.makeOverridable, lib.extendMkDerivation).
#
# Stubs: the derivation builders. Each takes the arguments its nixpkgs counterpart
# takes, with the same names, and is closed (no `...`) exactly where nixpkgs' is, so an
# unknown argument fails evaluation as it would against nixpkgs. Each returns a real
# derivation (`derivation`, structured attrs) that records its inputs, so every output
# instantiates and a .drv path changes exactly when what the builder was given changes.
#
# Packages: only attribute names that nixpkgs 26.05 has; any other name is a missing
# attribute, as it is in nixpkgs.
{
  lib,
  localSystem,
  rustcVersion,
}:
let
  muslOf =
    system:
    let
      platform = lib.systems.elaborate system;
    in
    {
      config = "${platform.parsed.cpu.name}-unknown-linux-musl";
      isStatic = true;
    };

  mkPackages =
    {
      build,
      host ? build,
      target ? host,
      static ? null,
      buildPackagesArgs ? null,
    }:
    lib.fix (
      self:
      let
        buildPlatform = lib.systems.elaborate build;
        # Native sets share one platform value, as nixpkgs' do: crane compares them.
        hostPlatform = if host == build then buildPlatform else lib.systems.elaborate host;
        targetPlatform = if target == host then hostPlatform else lib.systems.elaborate target;
        system = buildPlatform.system;

        bootstrapShell = derivation {
          name = "standin-bootstrap-bash";
          inherit system;
          builder = "/bin/sh";
        };

        # stdenv.mkDerivation (pkgs/stdenv/generic/make-derivation.nix): open, like
        # nixpkgs' (every other attribute is an environment variable of the build).
        # Takes an attribute set or a function of the final attributes.
        mkDerivationFor =
          stdenv: fnOrAttrs:
          let
            attrs = if builtins.isFunction fnOrAttrs then lib.fix fnOrAttrs else fnOrAttrs;
            name =
              attrs.name or (
                if attrs ? pname && attrs ? version then
                  "${attrs.pname}-${attrs.version}"
                else
                  throw "stdenv.mkDerivation: needs `name` or `pname` and `version`"
              );
            listArgs = [
              "nativeBuildInputs"
              "buildInputs"
              "propagatedBuildInputs"
              "propagatedNativeBuildInputs"
              "nativeCheckInputs"
              "checkInputs"
              "depsBuildBuild"
            ];
            badList = builtins.filter (n: attrs ? ${n} && !builtins.isList attrs.${n}) listArgs;
            drvAttrs =
              lib.filterAttrs (_: v: !builtins.isFunction v) (
                removeAttrs attrs [
                  "meta"
                  "passthru"
                  "env"
                  "pos"
                ]
              )
              // (attrs.env or { })
              // {
                inherit name system;
                builder = "${bootstrapShell}/bin/bash";
                args = [
                  "-e"
                  "standin-default-builder.sh"
                ];
                stdenvHostPlatform = stdenv.hostPlatform.config;
                __structuredAttrs = true;
              };
            drv = derivation drvAttrs;
            passthru = attrs.passthru or { };
          in
          if badList != [ ] then
            throw "stdenv.mkDerivation ${name}: ${toString badList} must be a list"
          else
            drv
            // passthru
            // {
              inherit passthru;
              meta = attrs.meta or { };
              overrideAttrs =
                f:
                mkDerivationFor stdenv (
                  attrs // (if builtins.isFunction (f attrs) then f attrs attrs else f attrs)
                );
            };

        ccFor =
          platform:
          let
            targetPrefix = lib.optionalString (platform != buildPlatform) "${platform.config}-";
          in
          package "gcc-wrapper" { inherit targetPrefix; }
          // {
            inherit targetPrefix;
            isGNU = true;
            bintools = package "binutils-wrapper" { inherit targetPrefix; } // {
              inherit targetPrefix;
            };
          };

        stdenvFor =
          cc:
          let
            stdenv = {
              inherit
                buildPlatform
                hostPlatform
                targetPlatform
                cc
                ;
              mkDerivation = mkDerivationFor stdenv;
              shell = "${bootstrapShell}/bin/bash";
              shellDryRun = "${stdenv.shell} -n -O extglob";
            };
          in
          stdenv;

        # A package: only its name and what it was built for enter its derivation.
        package =
          pname: extra:
          self.stdenv.mkDerivation (
            {
              inherit pname;
              version = "standin";
              meta.mainProgram = pname;
            }
            // extra
          );

        # pkgs/build-support/trivial-builders/default.nix
        runCommandWith =
          {
            stdenv ? self.stdenv,
            runLocal ? false,
            derivationArgs ? { },
            name,
          }:
          buildCommand:
          stdenv.mkDerivation (
            {
              enableParallelBuilding = true;
              inherit buildCommand name;
              passAsFile = [ "buildCommand" ] ++ (derivationArgs.passAsFile or [ ]);
            }
            // lib.optionalAttrs runLocal {
              preferLocalBuild = true;
              allowSubstitutes = false;
            }
            // removeAttrs derivationArgs [ "passAsFile" ]
          );

        writeTextFile =
          {
            name,
            text,
            executable ? false,
            destination ? "",
            checkPhase ? "",
            meta ? { },
            passthru ? { },
            allowSubstitutes ? false,
            preferLocalBuild ? true,
            derivationArgs ? { },
          }:
          self.runCommand name (
            {
              inherit
                text
                executable
                destination
                checkPhase
                allowSubstitutes
                preferLocalBuild
                meta
                passthru
                ;
            }
            // derivationArgs
          ) "standin: write $text to $out$destination";

        # pkgs/build-support/docker/default.nix: streamLayeredImage (closed).
        streamLayeredImage = lib.makeOverridable (
          {
            name,
            tag ? null,
            fromImage ? null,
            contents ? [ ],
            config ? { },
            architecture ? hostPlatform.go.GOARCH or hostPlatform.parsed.cpu.name,
            created ? "1970-01-01T00:00:01Z",
            mtime ? "1970-01-01T00:00:01Z",
            uid ? 0,
            gid ? 0,
            uname ? "root",
            gname ? "root",
            maxLayers ? 100,
            extraCommands ? "",
            fakeRootCommands ? "",
            enableFakechroot ? false,
            includeStorePaths ? true,
            includeNixDB ? false,
            passthru ? { },
            meta ? { },
            layeringPipeline ? null,
            debug ? false,
          }@args:
          let
            conf = self.writeText "${baseNameOf name}-conf.json" (
              builtins.toJSON {
                inherit
                  config
                  architecture
                  created
                  mtime
                  uid
                  gid
                  uname
                  gname
                  maxLayers
                  extraCommands
                  fakeRootCommands
                  enableFakechroot
                  includeStorePaths
                  includeNixDB
                  fromImage
                  ;
                tag = if tag == null then "" else tag;
                contents = lib.toList contents;
              }
            );
          in
          self.runCommand "stream-${baseNameOf name}" {
            inherit conf;
            passthru = passthru // {
              imageName = name;
              imageTag = tag;
              inherit conf;
              # For the offline tests: what the flake passed.
              standinArgs = args;
            };
            inherit meta;
          } "standin: write the stream script to $out"
        );

        # pkgs/build-support/fetchurl/default.nix (closed: "No ellipsis").
        fetchurl = lib.extendMkDerivation {
          constructDrv = self.stdenvNoCC.mkDerivation;
          excludeDrvArgNames = [
            "url"
            "derivationArgs"
            "sha1"
            "sha256"
            "sha512"
          ];
          extendDrvArgs =
            finalAttrs:
            {
              curlOpts ? "",
              curlOptsList ? [ ],
              derivationArgs ? { },
              downloadToTemp ? false,
              executable ? false,
              hash ? "",
              meta ? { },
              name ? null,
              nativeBuildInputs ? [ ],
              netrcImpureEnvVars ? [ ],
              netrcPhase ? null,
              outputHash ? "",
              outputHashAlgo ? "",
              passthru ? { },
              pname ? null,
              postFetch ? "",
              preferLocalBuild ? true,
              recursiveHash ? false,
              sha1 ? "",
              sha256 ? "",
              sha512 ? "",
              showURLs ? false,
              url ? "",
              urls ? [ ],
              version ? null,
            }:
            let
              hashes = lib.filterAttrs (_: v: v != "") { inherit hash sha1 sha256 sha512; };
              algo = if hash != "" then null else builtins.head (builtins.attrNames hashes);
            in
            if builtins.length (builtins.attrNames hashes) != 1 then
              throw "fetchurl ${toString (lib.toList url ++ urls)}: exactly one hash is needed"
            else
              derivationArgs
              // {
                name = if name != null then name else baseNameOf (builtins.head (lib.toList url ++ urls));
                urls = if urls != [ ] then urls else [ url ];
                outputHash = hashes.${if algo == null then "hash" else algo};
                outputHashAlgo = algo;
                outputHashMode = if recursiveHash || executable then "recursive" else "flat";
                inherit meta passthru;
              };
          inheritFunctionArgs = false;
        };
      in
      {
        inherit lib system;
        pkgs = self;
        stdenv = stdenvFor (ccFor hostPlatform);
        stdenvNoCC = stdenvFor null;

        newScope = extra: lib.callPackageWith (self // extra);
        callPackage = self.newScope { };
        # pkgs/top-level/splice.nix, as it is when nothing is cross-compiled: no splicing.
        splicePackages = { pkgsHostTarget, ... }: pkgsHostTarget;
        makeScopeWithSplicing' = lib.makeScopeWithSplicing' {
          inherit (self) splicePackages newScope;
        };

        # The package sets of the other platform pairs: the flake and crane build on
        # the machine they run on, so for a native set they are the set itself.
        buildPackages = if buildPackagesArgs == null then self else mkPackages buildPackagesArgs;
        pkgsBuildBuild = self.buildPackages;
        pkgsBuildHost = self.buildPackages;
        pkgsBuildTarget = self.buildPackages;
        pkgsHostHost = self;
        pkgsHostTarget = self;
        pkgsTargetTarget = self;
        pkgsStatic =
          if static == null then
            mkPackages {
              inherit build;
              host = muslOf build;
              buildPackagesArgs = {
                inherit build;
                target = muslOf build;
              };
            }
          else
            static;

        runCommandWith = runCommandWith;
        runCommand =
          name: env:
          runCommandWith {
            stdenv = self.stdenvNoCC;
            inherit name;
            derivationArgs = env;
          };
        runCommandLocal =
          name: env:
          runCommandWith {
            stdenv = self.stdenvNoCC;
            runLocal = true;
            inherit name;
            derivationArgs = env;
          };
        runCommandCC =
          name: env:
          runCommandWith {
            inherit name;
            derivationArgs = env;
          };
        inherit writeTextFile fetchurl;
        writeText = name: text: writeTextFile { inherit name text; };
        makeSetupHook =
          {
            name ? "hook",
            propagatedBuildInputs ? [ ],
            depsTargetTargetPropagated ? [ ],
            meta ? { },
            passthru ? { },
            substitutions ? { },
          }:
          script:
          self.runCommand name (
            substitutions
            // {
              inherit
                meta
                passthru
                propagatedBuildInputs
                depsTargetTargetPropagated
                script
                ;
            }
          ) "standin: install the setup hook";

        # pkgs/build-support/mkshell/default.nix (open, like nixpkgs').
        mkShell =
          {
            name ? "nix-shell",
            packages ? [ ],
            inputsFrom ? [ ],
            buildInputs ? [ ],
            nativeBuildInputs ? [ ],
            propagatedBuildInputs ? [ ],
            propagatedNativeBuildInputs ? [ ],
            ...
          }@attrs:
          let
            fromInputs = n: lib.flatten (lib.catAttrs n inputsFrom);
          in
          self.stdenv.mkDerivation (
            removeAttrs attrs [
              "packages"
              "inputsFrom"
            ]
            // {
              inherit name;
              buildInputs = buildInputs ++ fromInputs "buildInputs";
              nativeBuildInputs = packages ++ nativeBuildInputs ++ fromInputs "nativeBuildInputs";
              propagatedBuildInputs = propagatedBuildInputs ++ fromInputs "propagatedBuildInputs";
              propagatedNativeBuildInputs =
                propagatedNativeBuildInputs ++ fromInputs "propagatedNativeBuildInputs";
            }
          );

        dockerTools = {
          inherit streamLayeredImage;
        };

        # pkgs/build-support/rust/build-rust-package (open: it passes the rest to
        # mkDerivation). crane builds its crane-utils with it.
        rustPlatform.buildRustPackage =
          args:
          if !(args ? cargoLock || args ? cargoHash || args ? cargoDeps) then
            throw "buildRustPackage: needs cargoLock, cargoHash or cargoDeps"
          else
            self.stdenv.mkDerivation (removeAttrs args [ "cargoLock" ]);
      }
      // lib.genAttrs [
        # Real nixpkgs 26.05 attribute names (the flake's and crane's), and only these.
        "bash"
        "cargo"
        "clippy"
        "coreutils"
        "curl"
        "docker-client"
        "git"
        "gnutar"
        "iproute2"
        "iptables"
        "jq"
        "kind"
        "kubectl"
        "nixfmt"
        "protobuf"
        "python3"
        "rsync"
        "rustfmt"
        "shellcheck"
        "skopeo"
        "tilt"
        "writableTmpDirAsHomeHook"
        "zstd"
      ] (n: package n { })
      // {
        # rustc is built for a target: pkgsStatic.buildPackages.rustc also has the musl std.
        rustc = package "rustc" {
          version = rustcVersion;
          targetPlatformConfig = targetPlatform.config;
        };
      }
    );
in
mkPackages { build = localSystem; }
