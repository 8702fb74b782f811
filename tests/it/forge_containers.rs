//! End to end through a forge: a Forgejo job with `container:`, `services:`
//! and a `docker://` step, taken by the real `solstice run` daemon from the
//! strict fake forge and run in a real Debian guest (TCG) whose own Docker
//! engine pulls the test images through the image's `registry_mirror` (the
//! offline test registry, `support::registry`).

use crate::support;

use std::time::Duration;

use solstice::forge::forgejo::proto::TaskResult;
use solstice::testing::fake_forge::{FakeJob, TaskStatus};
use support::registry;
use support::world::{SECRET, World, fake, log_of};

const JOB: &str = r#"
name: ci
on: push
jobs:
  db:
    runs-on: debian
    container:
      image: solstice-test/postgres:15
      env:
        IN_CONTAINER: from-container-env
    services:
      db:
        image: solstice-test/postgres:15
        options: --health-cmd pg_isready --health-interval 2s --health-timeout 5s --health-retries 60
    steps:
      - name: Where
        run: echo "where=$(pwd) home=$HOME uid=$(id -u) env=$IN_CONTAINER sock=$(test -S /var/run/docker.sock && echo yes)"
      - name: Table
        run: |
          psql() { /usr/lib/postgresql/15/bin/psql "$@"; }
          psql -h db -U postgres -v ON_ERROR_STOP=1 -c 'create table t (x int)' -c 'insert into t values (42)'
          echo "answer=$(psql -h db -U postgres -At -c 'select x from t')" >> "$GITHUB_OUTPUT"
        id: table
      - name: Docker step
        uses: docker://solstice-test/bash:1
        with:
          entrypoint: bash
          args: -c "echo docker-step-in=$GITHUB_WORKSPACE answer=${{ steps.table.outputs.answer }}"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forgejo_job_with_a_job_container_a_service_and_a_docker_step() {
    let reg = registry::shared();
    let forge = fake().await;
    let world = World::new();
    forge.register_offline(SECRET, "fake", &["debian"]);
    let cred = world.secret_file("fake.secret", SECRET);
    let image = support::image("debian");
    let text = format!(
        "[daemon]\nstate_dir = {:?}\nmax_concurrent_jobs = 1\ndrain_timeout_secs = 30\n\
         [qemu]\naccel = \"tcg\"\n\
         [images.debian]\npath = {image:?}\nvcpus = 2\nmemory_mib = 1536\nssh_user = \"debian\"\n\
         boot_timeout_secs = 300\nlabels = [\"debian\"]\nregistry_mirror = {:?}\n\
         [forges.fake]\nurl = {:?}\n{cred}\nfetch_interval_secs = 1\nfetch_timeout_secs = 5\n",
        world.state_dir(),
        reg.mirror_url(),
        forge.url()
    );
    std::fs::write(&world.config, text).unwrap();
    let job = forge.enqueue(FakeJob::new(JOB, &["debian"]));
    let mut d = world.start();

    let t = match forge.wait_job_final(job, Duration::from_secs(900)).await {
        Some(t) => t,
        None => panic!(
            "the job did not finish; forge saw {:#?}\ndaemon log:\n{}",
            forge.task_for_job(job),
            d.log_text()
        ),
    };
    let log = log_of(&t);
    assert_eq!(t.status, TaskStatus::Success, "{log}");
    assert_eq!(t.steps.len(), 3, "{:#?}", t.steps);
    assert!(
        t.steps.iter().all(|s| s.result == TaskResult::Success),
        "{:#?}\n{log}",
        t.steps
    );
    let where_ = t.step_log(0).join("\n");
    assert!(
        where_.contains("where=/__w/") && where_.contains("home=/github/home"),
        "{where_}"
    );
    assert!(
        where_.contains("uid=0 env=from-container-env sock=yes"),
        "{where_}"
    );
    let docker = t.step_log(2).join("\n");
    assert!(
        docker.contains("docker-step-in=/github/workspace answer=42"),
        "{docker}"
    );
    // Set-up and the end of the job: containers started, the service's log printed.
    assert!(log.contains("Initialize containers"), "{log}");
    assert!(log.contains("db"), "{log}");
    assert!(
        log.contains("database system is ready to accept connections"),
        "the service's log is printed at the end:\n{log}"
    );
    d.signal(nix::sys::signal::Signal::SIGTERM);
    d.wait_exit(Duration::from_secs(60));
    world.assert_clean();
}
