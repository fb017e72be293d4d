# INTERFACE CHECK of flake.nix — not a build, and not an evaluation against real
# nixpkgs (which cannot be fetched where the tests run).
#
# It imports flake.nix and calls its `outputs` with a stub `nixpkgs` whose functions
# (rustPlatform.buildRustPackage, dockerTools.streamLayeredImage, mkShell) take the
# argument names the real nixpkgs functions take and throw on any other name, and
# whose package set has only the attributes listed below (each a real nixpkgs
# attribute), so a misspelt package fails evaluation. It returns what the flake
# passed to each, for tests/offline/test_flake.py to check against k8s/.
#
#   nix-instantiate --eval --strict --json tests/offline/flake-interface.nix \
#     --arg root ./. --argstr rustcVersion 1.95.0
{ root, rustcVersion ? "1.95.0" }:
let
  flake = import (root + "/flake.nix");

  # Throws unless every name of `args` is in `allowed` and every `required` one is there.
  checkArgs = fname: allowed: required: args:
    let
      names = builtins.attrNames args;
      unknown = builtins.filter (n: !(builtins.elem n allowed)) names;
      missing = builtins.filter (n: !(builtins.hasAttr n args)) required;
    in
    if !(builtins.isAttrs args) then throw "${fname}: expects an attribute set"
    else if unknown != [ ] then throw "${fname}: unknown argument(s): ${toString unknown}"
    else if missing != [ ] then throw "${fname}: missing argument(s): ${toString missing}"
    else args;

  # pkgs/build-support/rust/build-rust-package/default.nix (and the mkDerivation
  # arguments it passes on that a Rust package commonly sets).
  buildRustPackageArgs = [
    "pname" "version" "name" "src" "srcs" "sourceRoot" "patches" "cargoLock" "cargoHash"
    "cargoDeps" "cargoVendorDir" "cargoPatches" "cargoDepsName" "cargoBuildFlags"
    "cargoTestFlags" "buildType" "checkType" "buildFeatures" "checkFeatures"
    "buildNoDefaultFeatures" "checkNoDefaultFeatures" "buildAndTestSubdir" "useNextest"
    "auditable" "doCheck" "checkFlags" "nativeBuildInputs" "buildInputs"
    "nativeCheckInputs" "env" "meta" "passthru" "preBuild" "postBuild" "preCheck"
    "postCheck" "postInstall" "dontStrip" "separateDebugInfo" "strictDeps" "__structuredAttrs"
  ];
  cargoLockArgs = [ "lockFile" "lockFileContents" "outputHashes" "allowBuiltinFetchGit" ];
  buildRustPackage = variant: args0:
    let
      args = checkArgs "buildRustPackage" buildRustPackageArgs [ "pname" "version" "src" ] args0;
      lock = checkArgs "buildRustPackage.cargoLock" cargoLockArgs [ ] (args.cargoLock or { });
    in
    if !(args ? cargoLock || args ? cargoHash) then throw "buildRustPackage: needs cargoLock or cargoHash"
    else {
      _stub = "buildRustPackage";
      inherit variant;
      inherit (args) pname version;
      cargoBuildFlags = args.cargoBuildFlags or [ ];
      cargoTestFlags = args.cargoTestFlags or [ ];
      doCheck = args.doCheck or true;
      lockFile = if lock ? lockFile then toString lock.lockFile else null;
      src = toString args.src;
      mainProgram = (args.meta or { }).mainProgram or null;
      bin = "/bin";
    };
  rustPlatform = variant: { buildRustPackage = buildRustPackage variant; };

  # pkgs/build-support/docker/default.nix, streamLayeredImage.
  streamLayeredImageArgs = [
    "name" "tag" "fromImage" "contents" "config" "architecture" "created" "mtime" "uid"
    "gid" "uname" "gname" "maxLayers" "extraCommands" "fakeRootCommands"
    "enableFakechroot" "includeStorePaths" "includeNixDB" "passthru" "meta"
    "layeringPipeline" "debug"
  ];
  # The image config keys dockerTools passes through (OCI/Docker image config).
  imageConfigKeys = [
    "User" "ExposedPorts" "Env" "Entrypoint" "Cmd" "Volumes" "WorkingDir" "Labels"
    "StopSignal" "Healthcheck" "ArgsEscaped" "OnBuild" "Shell"
  ];
  streamLayeredImage = args0:
    let
      args = checkArgs "dockerTools.streamLayeredImage" streamLayeredImageArgs [ "name" ] args0;
      config = checkArgs "dockerTools.streamLayeredImage config" imageConfigKeys [ ] (args.config or { });
    in
    {
      _stub = "streamLayeredImage";
      inherit (args) name;
      tag = args.tag or null;
      created = args.created or "1970-01-01T00:00:01Z";
      contents = map (c: c.pname or c._stub or "unknown") (args.contents or [ ]);
      extraCommands = args.extraCommands or "";
      fakeRootCommands = args.fakeRootCommands or "";
      inherit config;
    };

  # pkgs/build-support/mkshell/default.nix
  mkShellArgs = [
    "name" "packages" "inputsFrom" "buildInputs" "nativeBuildInputs" "propagatedBuildInputs"
    "propagatedNativeBuildInputs" "shellHook" "env" "passthru" "meta"
  ];
  mkShell = args0:
    let args = checkArgs "mkShell" mkShellArgs [ ] args0;
    in {
      _stub = "mkShell";
      packages = map (p: p.pname) (args.packages or [ ] ++ args.nativeBuildInputs or [ ] ++ args.buildInputs or [ ]);
      shellHook = args.shellHook or "";
    };

  pkg = pname: { _stub = "package"; inherit pname; };
  # Real nixpkgs attribute names, and only these.
  packageNames = [
    "cargo" "clippy" "rustfmt" "rust-analyzer" "kind" "kubectl" "tilt" "skopeo" "jq" "yq-go"
    "curl" "python3" "shellcheck" "docker-client" "docker" "ctlptl" "nixpkgs-fmt" "nixfmt-rfc-style"
    "git" "gnumake" "bash" "coreutils" "cargo-nextest"
  ];
  pkgsFor = system:
    builtins.listToAttrs (map (n: { name = n; value = pkg n; }) packageNames) // {
      inherit system mkShell;
      rustc = pkg "rustc" // { version = rustcVersion; };
      rustPlatform = rustPlatform "glibc";
      pkgsStatic = { rustPlatform = rustPlatform "static"; };
      dockerTools = { inherit streamLayeredImage; };
    };

  nixpkgs = {
    legacyPackages = builtins.listToAttrs (map (s: { name = s; value = pkgsFor s; }) [ "x86_64-linux" "aarch64-linux" ]);
  };

  outputs = flake.outputs { self = outputs // { outPath = toString root; }; inherit nixpkgs; };
  system = "x86_64-linux";
in
{
  inherit (flake) description;
  inputs = flake.inputs;
  systems = builtins.attrNames outputs.packages;
  packages = outputs.packages.${system};
  checks = outputs.checks.${system};
  devShell = outputs.devShells.${system}.default;
  outputNames = builtins.attrNames outputs;
}
