# The TOML document (as JSON with `nix-instantiate --eval --strict --json`)
# that `services.solstice` renders for its documented example.
import ./render.nix {
  inherit (import ./example.nix) settings forges images;
  credentialDir = "/run/credentials/solstice.service";
}
