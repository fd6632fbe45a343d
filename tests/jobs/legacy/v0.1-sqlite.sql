BEGIN TRANSACTION;
CREATE TABLE counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
INSERT INTO "counters" VALUES('job',6);
CREATE TABLE job_events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL,
    step INTEGER NOT NULL,
    total INTEGER NOT NULL,
    read INTEGER NOT NULL DEFAULT 0
);
INSERT INTO "job_events" VALUES(1,'running',2,4,0);
CREATE TABLE jobs (
    id TEXT PRIMARY KEY,
    number INTEGER NOT NULL UNIQUE,
    owner TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    dialect TEXT NOT NULL,
    extra TEXT NOT NULL,
    status TEXT NOT NULL,
    request TEXT NOT NULL,
    input TEXT NOT NULL,
    policy TEXT NOT NULL,
    webhook TEXT,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    expires_at REAL,
    ttl_s REAL NOT NULL,
    timeout_s REAL,
    low_priority INTEGER NOT NULL DEFAULT 0,
    outputs TEXT NOT NULL DEFAULT '[]',
    error TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    retried INTEGER NOT NULL DEFAULT 0,
    worker_id TEXT,
    heartbeat_at REAL,
    progress_step INTEGER NOT NULL DEFAULT 0,
    progress_total INTEGER NOT NULL DEFAULT 0
);
INSERT INTO "jobs" VALUES('running',1,'alice','default','runpod','{}','IN_PROGRESS','{"model":"default","prompt":"prompt of running","negative_prompt":"","width":128,"height":128,"init_image":null,"mask":null,"guidance_scale":3.0,"num_inference_steps":4,"num_outputs":2,"prompt_strength":0.8,"scheduler":"K-LMS","seed":7,"use_compel":false,"lora":null,"lora_scale":1.0,"blank_nsfw":false}','{"prompt": "prompt of running"}','{"execution_timeout_ms":null,"ttl_ms":1000000000,"low_priority":false}','http://127.0.0.1:9/hook',1790000000.0,1.79610195563723063468e+09,NULL,NULL,1000000.0,NULL,0,'[]',NULL,1,0,'w1',1.79610195563723063468e+09,2,4);
INSERT INTO "jobs" VALUES('completed',2,'alice','default','runpod','{}','COMPLETED','{"model":"default","prompt":"prompt of completed","negative_prompt":"","width":128,"height":128,"init_image":null,"mask":null,"guidance_scale":3.0,"num_inference_steps":4,"num_outputs":2,"prompt_strength":0.8,"scheduler":"K-LMS","seed":7,"use_compel":false,"lora":null,"lora_scale":1.0,"blank_nsfw":false}','{"prompt": "prompt of completed"}','{"execution_timeout_ms":null,"ttl_ms":1000000000,"low_priority":false}','http://127.0.0.1:9/hook',1790000000.0,1.79610195563770055774e+09,1.79610195563831305499e+09,1.79710195563831305501e+09,1000000.0,NULL,0,'[{"key": "completed/0.png", "seed": 7, "nsfw": false}, {"key": "completed/1.png", "seed": 8, "nsfw": false}]',NULL,1,0,'w1',NULL,0,0);
INSERT INTO "jobs" VALUES('failed',3,'alice','default','runpod','{}','FAILED','{"model":"default","prompt":"prompt of failed","negative_prompt":"","width":128,"height":128,"init_image":null,"mask":null,"guidance_scale":3.0,"num_inference_steps":4,"num_outputs":2,"prompt_strength":0.8,"scheduler":"K-LMS","seed":7,"use_compel":false,"lora":null,"lora_scale":1.0,"blank_nsfw":false}','{"prompt": "prompt of failed"}','{"execution_timeout_ms":null,"ttl_ms":1000000000,"low_priority":false}','http://127.0.0.1:9/hook',1790000000.0,1.7961019556379787922e+09,1.79610195563855028159e+09,1.79710195563855028148e+09,1000000.0,NULL,0,'[]','it broke',1,0,'w1',NULL,0,0);
INSERT INTO "jobs" VALUES('cancelled',4,'alice','default','runpod','{}','CANCELLED','{"model":"default","prompt":"prompt of cancelled","negative_prompt":"","width":128,"height":128,"init_image":null,"mask":null,"guidance_scale":3.0,"num_inference_steps":4,"num_outputs":2,"prompt_strength":0.8,"scheduler":"K-LMS","seed":7,"use_compel":false,"lora":null,"lora_scale":1.0,"blank_nsfw":false}','{"prompt": "prompt of cancelled"}','{"execution_timeout_ms":null,"ttl_ms":1000000000,"low_priority":false}','http://127.0.0.1:9/hook',1790000000.0,NULL,1.79610195563864159578e+09,1.7971019556386415958e+09,1000000.0,NULL,0,'[]',NULL,0,0,NULL,NULL,0,0);
INSERT INTO "jobs" VALUES('queued',5,'alice','default','runpod','{}','IN_QUEUE','{"model":"default","prompt":"prompt of queued","negative_prompt":"","width":128,"height":128,"init_image":null,"mask":null,"guidance_scale":3.0,"num_inference_steps":4,"num_outputs":2,"prompt_strength":0.8,"scheduler":"K-LMS","seed":7,"use_compel":false,"lora":null,"lora_scale":1.0,"blank_nsfw":false}','{"prompt": "prompt of queued"}','{"execution_timeout_ms":null,"ttl_ms":1000000000,"low_priority":false}','http://127.0.0.1:9/hook',1790000000.0,NULL,NULL,NULL,1000000.0,NULL,0,'[]',NULL,0,0,NULL,NULL,0,0);
INSERT INTO "jobs" VALUES('queued-low',6,'alice','default','runpod','{}','IN_QUEUE','{"model":"default","prompt":"prompt of queued-low","negative_prompt":"","width":128,"height":128,"init_image":null,"mask":null,"guidance_scale":3.0,"num_inference_steps":4,"num_outputs":2,"prompt_strength":0.8,"scheduler":"K-LMS","seed":7,"use_compel":false,"lora":null,"lora_scale":1.0,"blank_nsfw":false}','{"prompt": "prompt of queued-low"}','{"execution_timeout_ms":null,"ttl_ms":1000000000,"low_priority":true}','http://127.0.0.1:9/hook',1790000000.0,NULL,NULL,NULL,1000000.0,NULL,1,'[]',NULL,0,0,NULL,NULL,0,0);
CREATE TABLE webhooks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL,
    url TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at REAL NOT NULL
);
INSERT INTO "webhooks" VALUES(1,'completed','http://127.0.0.1:9/hook',0,1.79610195563831305499e+09);
INSERT INTO "webhooks" VALUES(2,'failed','http://127.0.0.1:9/hook',0,1.79610195563855028159e+09);
CREATE TABLE workers (
    worker_id TEXT PRIMARY KEY,
    heartbeat_at REAL NOT NULL,
    job_id TEXT
);
INSERT INTO "workers" VALUES('w1',1.79610195563709330555e+09,NULL);
CREATE INDEX jobs_queue ON jobs (status, low_priority, created_at);
CREATE INDEX jobs_expiry ON jobs (expires_at);
CREATE INDEX job_events_job ON job_events (job_id, read);
DELETE FROM "sqlite_sequence";
INSERT INTO "sqlite_sequence" VALUES('job_events',1);
INSERT INTO "sqlite_sequence" VALUES('webhooks',2);
COMMIT;
