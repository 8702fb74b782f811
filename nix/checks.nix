# Checks that need only the package's source: the package itself (its build
# runs the tests that need no VM), clippy, rustfmt, and the Nix files' format
# and dead code (the same as scripts/check-nix).
{
  pkgs,
  self,
  solstice,
}:
{
  package = solstice;

  clippy = solstice.overrideAttrs (old: {
    pname = "solstice-clippy";
    nativeBuildInputs = old.nativeBuildInputs ++ [ pkgs.clippy ];
    buildPhase = ''
      runHook preBuild
      cargo clippy --offline --all-targets -- -D warnings
      runHook postBuild
    '';
    doCheck = false;
    installPhase = "touch $out";
    postInstall = "";
  });

  fmt =
    pkgs.runCommand "solstice-fmt"
      {
        nativeBuildInputs = [
          pkgs.cargo
          pkgs.rustfmt
        ];
      }
      ''
        cp -r ${self} src
        chmod -R u+w src
        cd src
        cargo fmt --all -- --check
        touch $out
      '';

  nix-style =
    pkgs.runCommand "solstice-nix-style"
      {
        nativeBuildInputs = [
          pkgs.nixfmt
          pkgs.deadnix
        ];
      }
      ''
        cd ${self}
        nixfmt --check $(find . -name '*.nix')
        deadnix --fail $(find . -name '*.nix')
        touch $out
      '';
}
