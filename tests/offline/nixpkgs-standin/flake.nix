# A stand-in for the nixpkgs flake (nixos-26.05), for evaluating flake.nix offline:
# `nix flake check --override-input nixpkgs path:<this, staged>`. tests/offline/nix-eval.sh
# stages it with nixpkgs' real lib/ of 26.05 beside this file (./lib) and the rustc
# version in ./rustc-version. See pkgs.nix for what is real and what is a stub.
{
  description = "offline stand-in for nixpkgs 26.05: its real lib, and stubs of its derivation builders";

  outputs =
    { self }:
    let
      lib = import ./lib;
      rustcVersion = lib.fileContents ./rustc-version;
    in
    {
      inherit lib;
      legacyPackages = lib.genAttrs [ "x86_64-linux" "aarch64-linux" ] (
        system:
        import ./pkgs.nix {
          inherit lib rustcVersion;
          localSystem = system;
        }
      );
    };
}
