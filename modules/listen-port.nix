# The port of a listen address as the config file writes it ("0.0.0.0:2222",
# "[::]:2222"), or null when the text does not end in `:<digits>`. Pure
# (builtins only), so tests/it/nixos_module.rs evaluates it without nixpkgs.
listen:
let
  m = builtins.match ".*:0*([0-9]+)" listen;
in
if m == null then null else builtins.fromJSON (builtins.head m)
