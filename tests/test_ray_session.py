from genrec.ray_session import LOCAL_SYSTEM_CONFIG, local_system_config


def test_a_local_ray_gets_workers_at_its_daemons_priority_unless_the_user_set_it():
    assert LOCAL_SYSTEM_CONFIG["worker_niceness"] == 0
    assert local_system_config({}) == {"worker_niceness": 0}
    assert local_system_config({"PATH": "/bin"}) == {"worker_niceness": 0}
    # a RAY_ variable the user set is Ray's to read; the system config would override it
    assert local_system_config({"RAY_worker_niceness": "15"}) == {}
