from __future__ import annotations

import json

import pytest

from elastic.errors import UsageError
from elastic.resume_request import ResumeJob, ResumeRequest, parse_resume_file

SCHEMA_22_05 = '{"jobs":[{"job_id":1,"nodes":"cn[1-2]"}],"all_nodes":"cn[1-2]"}'
SCHEMA_23_02 = json.dumps({
    "all_nodes_resume": "cloud[1-3,7-8]",
    "jobs": [
        {"extra": "An arbitrary string from --extra", "features": "c1,c2", "job_id": 140814,
         "nodes_alloc": "cloud[1-4]", "nodes_resume": "cloud[1-3]", "oversubscribe": "OK",
         "partition": "cloud", "reservation": "resv_1234"},
        {"extra": None, "features": None, "job_id": 140816, "nodes_alloc": "cloud[7-8]",
         "nodes_resume": "cloud[7-8]", "oversubscribe": "NO", "partition": "cloud_exclusive",
         "reservation": None, "exclusive": "user", "priority": 4294901759},  # 26.05 keys
    ],
})


def test_parse_22_05_schema():
    """The 22.05 schema ("nodes", "all_nodes") gives expanded node names per job."""
    assert parse_resume_file(SCHEMA_22_05) == ResumeRequest(
        all_nodes=("cn1", "cn2"), jobs=(ResumeJob(job_id=1, nodes=("cn1", "cn2"), partition=None),))


def test_parse_22_05_manual_power_up():
    """A manual power_up has no jobs."""
    assert parse_resume_file('{"jobs":[],"all_nodes":"cn3"}') == ResumeRequest(all_nodes=("cn3",), jobs=())


def test_parse_23_02_schema_uses_nodes_resume_and_ignores_unknown_keys():
    """23.02+: per-job nodes are nodes_resume, nodes_alloc is kept apart; 26.05's extra keys are ignored."""
    request = parse_resume_file(SCHEMA_23_02)
    assert request.all_nodes == ("cloud1", "cloud2", "cloud3", "cloud7", "cloud8")
    assert request.jobs == (
        ResumeJob(140814, ("cloud1", "cloud2", "cloud3"), "cloud", "c1,c2", "resv_1234",
                  nodes_alloc=("cloud1", "cloud2", "cloud3", "cloud4")),
        ResumeJob(140816, ("cloud7", "cloud8"), "cloud_exclusive", None, None, nodes_alloc=("cloud7", "cloud8")),
    )


def test_parse_job_with_no_node_left():
    """A job whose nodes_resume is empty has no nodes rather than failing."""
    request = parse_resume_file('{"all_nodes_resume":"cn1","jobs":[{"job_id":5,"nodes_resume":""}]}')
    assert request.jobs == (ResumeJob(5, ()),)


@pytest.mark.parametrize(("text", "message"), [
    ("{not json", "SRC: not JSON: Expecting property name enclosed in double quotes at line 1 column 2"),
    ("[]", "SRC: expected a JSON object, got list"),
    ('{"jobs":[]}', "SRC: has neither all_nodes_resume (23.02+) nor all_nodes (22.05)"),
    ('{"all_nodes":7}', "SRC: all_nodes: expected a hostlist string, got int"),
    ('{"all_nodes":"cn[1-"}', "SRC: all_nodes: bad hostlist 'cn[1-': unbalanced brackets"),
    ('{"all_nodes":"cn1","jobs":{}}', "SRC: jobs: expected a list, got dict"),
    ('{"all_nodes":"cn1","jobs":[3]}', "SRC: jobs[0]: expected an object, got int"),
    ('{"all_nodes":"cn1","jobs":[{"job_id":"1"}]}', "SRC: jobs[0].job_id: expected an integer, got str"),
    ('{"all_nodes":"cn1","jobs":[{"job_id":true}]}', "SRC: jobs[0].job_id: expected an integer, got bool"),
    ('{"all_nodes_resume":"cn1","jobs":[{"job_id":1,"nodes_resume":"cn1","nodes_alloc":["cn1"]}]}',
     "SRC: jobs[0].nodes_alloc: expected a hostlist string, got list"),
    ('{"all_nodes":"cn1","jobs":[{"job_id":1,"partition":["a"]}]}',
     "SRC: jobs[0].partition: expected a string or null, got list"),
])
def test_parse_rejects_bad_input_with_one_line_naming_source(text, message):
    """Bad JSON or a wrong shape is a one-line UsageError naming the source and the key."""
    with pytest.raises(UsageError) as caught:
        parse_resume_file(text, source="SRC")
    assert str(caught.value) == message
