# The guest images built with Nix, by name. The NixOS guest builds from
# nixpkgs alone; the illumos images need a confirmed pin in images/pins.json.
# `isPinned` tells the flake which illumos images it may list in `packages`
# (an unpinned one would fail `nix flake check` for everyone).
{ pkgs, lib }:
let
  illumos = import ./illumos.nix { inherit pkgs lib; };
in
{
  images = {
    nixos = import ./nixos-guest.nix { inherit pkgs lib; };
    inherit (illumos) omnios openindiana;
  };
  inherit (illumos) isPinned;
}
