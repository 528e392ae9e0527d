from genrec.ray_session import LOCAL_SYSTEM_CONFIG, LOCAL_TRAIN_ENV, local_system_config, local_train_env


def test_a_local_ray_gets_workers_at_its_daemons_priority_unless_the_user_set_it():
    assert LOCAL_SYSTEM_CONFIG["worker_niceness"] == 0
    assert local_system_config({}) == {"worker_niceness": 0}
    assert local_system_config({"PATH": "/bin"}) == {"worker_niceness": 0}
    # a RAY_ variable the user set is Ray's to read; the system config would override it
    assert local_system_config({"RAY_worker_niceness": "15"}) == {}


def test_a_local_ray_runs_without_ray_trains_preemption_watcher_unless_the_user_set_it():
    assert local_train_env({}) == {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}
    assert local_train_env({"PATH": "/bin"}) == LOCAL_TRAIN_ENV
    assert local_train_env({"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "1"}) == {}
