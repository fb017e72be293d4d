# What tests/offline/test_flake.py checks of the flake's outputs: every output's .drv
# path for every system (evaluating it instantiates the derivation), and for
# x86_64-linux what the flake passed to the builders.
{ lib, flake }:
let
  name = d: d.pname or d.name;
  names = map name;
  drvPaths = lib.mapAttrs (_: d: d.drvPath);
  system = "x86_64-linux";
  packages = flake.packages.${system};
  checks = flake.checks.${system};
  shell = flake.devShells.${system}.default;
  image =
    img:
    let
      a = img.passthru.standinArgs;
    in
    {
      inherit (a)
        name
        tag
        created
        config
        extraCommands
        fakeRootCommands
        ;
      contents = names a.contents;
    };
  listing =
    dir:
    lib.mapAttrs (n: t: if t == "directory" then listing "${dir}/${n}" else t) (builtins.readDir dir);
in
{
  systems = builtins.attrNames flake.packages;
  outputNames = builtins.attrNames flake.outputs;
  drvs = lib.genAttrs (builtins.attrNames flake.packages) (s: {
    packages = drvPaths flake.packages.${s};
    checks = drvPaths flake.checks.${s};
    devShells = drvPaths flake.devShells.${s};
    formatter = flake.formatter.${s}.drvPath;
  });
  deps = lib.genAttrs (builtins.attrNames flake.packages) (s: {
    static = flake.packages.${s}.raftkv.cargoArtifacts.drvPath;
    tests = flake.checks.${s}.tests.cargoArtifacts.drvPath;
  });
  images = {
    server-image = image packages.server-image;
    client-image = image packages.client-image;
  };
  imageChecks = lib.mapAttrs (_: c: c.buildCommand) { inherit (checks) server-image client-image; };
  raftkv = {
    inherit (packages.raftkv)
      pname
      buildPhase
      CARGO_BUILD_TARGET
      doCheck
      ;
    nativeBuildInputs = names packages.raftkv.nativeBuildInputs;
    depsTarget = packages.raftkv.cargoArtifacts.CARGO_BUILD_TARGET;
    # The stand-in's rustc records the platform it targets: the cross rustc's is musl.
    rustcTargets = map (d: d.targetPlatformConfig) (
      builtins.filter (d: name d == "rustc") packages.raftkv.nativeBuildInputs
    );
    src = listing packages.raftkv.src;
    mainProgram = packages.raftkv.meta.mainProgram;
  };
  tests = {
    inherit (checks.tests)
      buildPhase
      checkPhase
      installPhase
      doCheck
      ;
    nativeBuildInputs = names checks.tests.nativeBuildInputs;
    nativeCheckInputs = names checks.tests.nativeCheckInputs;
    depsNativeBuildInputs = names checks.tests.cargoArtifacts.nativeBuildInputs;
  };
  devShell = names shell.nativeBuildInputs;
  formatter = name flake.formatter.${system};
}
