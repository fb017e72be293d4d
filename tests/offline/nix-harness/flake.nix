# Evaluates raftkv's flake against the nixpkgs stand-in and crane's real source, and
# returns a JSON report of its outputs for tests/offline/test_flake.py. The inputs are
# where tests/offline/nix-eval.sh mounts the stage; the test also passes them with
# --override-input. Nothing is built.
{
  inputs.nixpkgs.url = "path:/stage/standin";
  inputs.crane.url = "path:/stage/crane";
  inputs.raftkv.url = "path:/stage/repo";
  inputs.raftkv.inputs.nixpkgs.follows = "nixpkgs";
  inputs.raftkv.inputs.crane.follows = "crane";

  outputs =
    { raftkv, nixpkgs, ... }:
    {
      report = import ./report.nix {
        inherit (nixpkgs) lib;
        flake = raftkv;
      };
    };
}
