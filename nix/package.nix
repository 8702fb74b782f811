# The Solstice package: the `solstice` binary, with QEMU, qemu-img and git on
# its PATH. Built from this repository's Cargo.lock; tests that boot VMs or
# start SSH servers are kept out of the build sandbox (see `cargoTestFlags`).
{
  lib,
  stdenv,
  rustPlatform,
  makeWrapper,
  qemu,
  qemu_kvm,
  git,
  openssh,
  cpio,
  cdrkit,
  passt,
}:
let
  root = ./..;
  # Guests are x86_64. `qemu_kvm` holds only the host's own target, which is
  # right on x86_64; elsewhere build QEMU with the x86_64 system emulator.
  guestQemu =
    if stdenv.hostPlatform.isx86_64 then
      qemu_kvm
    else
      qemu.override { hostCpuTargets = [ "x86_64-softmmu" ]; };
  cargoToml = lib.importTOML (root + "/Cargo.toml");
in
rustPlatform.buildRustPackage {
  pname = "solstice";
  inherit (cargoToml.package) version;

  # Only what the build reads: a change to docs, images or Nix files does not
  # rebuild the package.
  src = lib.fileset.toSource {
    inherit root;
    fileset = lib.fileset.unions [
      (root + "/Cargo.toml")
      (root + "/Cargo.lock")
      (root + "/src")
      (lib.fileset.difference (root + "/tests") (root + "/tests/nixos"))
      (root + "/examples")
      (root + "/docs")
    ];
  };

  cargoLock.lockFile = root + "/Cargo.lock";

  nativeBuildInputs = [ makeWrapper ];

  # The unit tests and the integration-test modules that need no VM, no SSH
  # server and no network beyond 127.0.0.1 (one test binary, `it`, with a
  # module per area). Skipped on purpose: exec_cli, exec_debian, exec_tiny,
  # exec_runner, actions_vm, cache_vm, containers_action, vm_boot, doctor_cli, checkout_gitless, debug_scrub,
  # run_cli, guest_network, github_e2e, forge_containers, debug_gateway, debug_ssh, warm_pool, warm_snapshot and forge_e2e* boot guests (guest_network also makes
  # network namespaces as root); containers_engine boots guests, runs Debian's
  # docker-registry in a network namespace and builds test images with apt-get; forge_artifacts needs node, npm and the npm
  # registry, root (network namespaces) and boots guests; hashfiles runs under
  # busybox, dash and ksh;
  # ssh_client and ssh_throughput start sshd and dropbear; executor_local and
  # executor_shells need ksh, dash and busybox; nixos_module needs
  # nix-instantiate; actions_local needs node and the npm registry (once, for
  # @actions/core); bench_cli, cli_messages and docs_match_code were left out
  # when each was its own binary, and still are.
  # These run in `scripts/test` on a host with QEMU, and in the NixOS tests.
  cargoTestFlags = [
    "--lib"
    "--test"
    "it"
  ];
  checkFlags =
    lib.concatMap
      (module: [
        "--skip"
        "${module}::"
      ])
      [
        "actions_local"
        "actions_vm"
        "bench_cli"
        "cache_vm"
        "checkout_gitless"
        "cli_messages"
        "containers_action"
        "containers_engine"
        "containers_job"
        "debug_gateway"
        "debug_scrub"
        "debug_ssh"
        "docs_match_code"
        "doctor_cli"
        "exec_cli"
        "exec_debian"
        "exec_runner"
        "exec_tiny"
        "executor_local"
        "executor_shells"
        "forge_artifacts"
        "forge_containers"
        "forge_e2e"
        "forge_e2e_gone"
        "github_e2e"
        "guest_network"
        "hashfiles"
        "nixos_module"
        "run_cli"
        "ssh_client"
        "ssh_throughput"
        "vm_boot"
        "warm_pool"
        "warm_snapshot"
      ]
    # The one test of `store` that boots a guest (a warm pool's, killed with the daemon).
    ++ [
      "--skip"
      "store::sigkill_with_a_warm_guest_up_then_restart_leaves_no_orphan"
    ];
  # Unit tests call qemu-img (overlays), cpio (metadata seed) and isoinfo
  # (NoCloud ISO layout) and ssh-keygen on files they make themselves.
  nativeCheckInputs = [
    guestQemu
    cpio
    cdrkit
    git
    openssh
  ];

  # QEMU and qemu-img are found through PATH (`qemu.system_binary` and
  # `qemu.img_binary` default to bare names); git for checkouts made on the
  # host, ssh for `solstice bench`; pasta (passt) is the uplink of each job
  # VM's own network namespace (images with network = "outbound" or "none").
  postInstall = ''
    wrapProgram $out/bin/solstice \
      --suffix PATH : ${
        lib.makeBinPath [
          guestQemu
          git
          openssh
          passt
        ]
      }
  '';

  passthru = {
    # Where the NixOS module finds UEFI firmware for `firmware = "uefi"` images.
    qemu = guestQemu;
  };

  meta = {
    description = "Self-hosted CI runner for Forgejo and Gitea that runs each job in a throw-away QEMU VM";
    license = lib.licenses.mpl20;
    mainProgram = "solstice";
    platforms = lib.platforms.linux;
  };
}
