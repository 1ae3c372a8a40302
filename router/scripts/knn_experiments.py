#!/usr/bin/env python3
"""Source-held-out experiments with k-nearest-neighbour classifiers on the router's cached MiniLM
embeddings (the cache `coe router train` fills under ~/.cache/coe/router-embeddings; run a training
first). Same protocol as `coe router train`: each non-synthetic source in turn is held out and
predicted by a model of the others; macro accuracy over categories; temperature cross-fitted.

kNN is measured here, not shipped: it needs every training embedding at run time (16 MB for the
shipped data) and its vote shares calibrate poorly. Results: router/artifacts/minilm-8cat/EXPERIMENTS.md.

    python3 router/scripts/knn_experiments.py      # needs numpy (the bench venv has it)
    python3 router/scripts/knn_experiments.py --llm-written   # also trains on the LLM-written queries,
                                                              # and adds linear and linear+kNN rows (sklearn)
"""
import collections
import json
import sys
import time

import numpy as np

from embedding_cache import fnv, load_cache

def question_stem(p):
    off=0
    for line in p.splitlines(keepends=True):
        t=line.lstrip()
        if len(t)>=2 and t[0]=='A' and t[1] in '.)' and off>0:
            return p[:off].rstrip()
        off+=len(line)
    return p.rstrip()
def first_sentence(p):
    stem=question_stem(p); b=stem
    end=len(stem)
    for i,c in enumerate(b):
        nxt = i+1>=len(b) or b[i+1] in ' \t\n\r\x0c'
        if c=='\n' or (c in '.?!' and nxt):
            end = i if c=='\n' else i+1
            if len(stem[:end].split())>=4: break
            end=len(stem)
    f=stem[:end].strip()
    return f if (len(f)<len(stem.strip()) and f) else None
def views(p):
    v=[p]; s=question_stem(p)
    if s!=p.rstrip() and s: v.append(s)
    f=first_sentence(p)
    if f and f not in v: v.append(f)
    return v
def load_jsonl(path):
    return [json.loads(l) for l in open(path) if l.strip()]
idx,V=load_cache()
LLM_WRITTEN = '--llm-written' in sys.argv
ex=load_jsonl('data/router/router_train.jsonl')+load_jsonl('data/router/synthetic_short_queries.jsonl')
if LLM_WRITTEN:
    ex+=load_jsonl('data/router/llm_written_queries.jsonl')
labels=sorted({e['category'] for e in ex}); L={c:i for i,c in enumerate(labels)}
y=np.array([L[e['category']] for e in ex]); src=np.array([e['source'] for e in ex])
rows=[];rex=[];rview=[]
P=np.zeros((len(ex),384),np.float32)
for i,e in enumerate(ex):
    for k,v in enumerate(views(e['prompt'])):
        h=fnv(v)
        if h not in idx: continue
        if k==0: P[i]=V[idx[h]]
        rows.append(V[idx[h]]); rex.append(i); rview.append(k)
X=np.array(rows); rex=np.array(rex); rview=np.array(rview)
has=np.array([fnv(e['prompt']) in idx for e in ex])
print('missing prompts',(~has).sum())
syn=np.array([s.startswith('synthetic') for s in src])
def weights(sel):
    # each category same total weight; each source within category same
    ys=y[rex[sel]]; ss=src[rex[sel]]
    g=collections.Counter(zip(ys,ss)); gpl=collections.Counter(c for c,_ in g)
    w=np.array([1.0/(len(gpl)*gpl[c]*g[(c,s)]) for c,s in zip(ys,ss)])
    return w*len(w)
def softmax(z,T=1.0):
    z=z/T; z=z-z.max(1,keepdims=True); e=np.exp(z); return e/e.sum(1,keepdims=True)
def ece(p,t,bins=15):
    conf=p.max(1); pred=p.argmax(1); ok=pred==t; e=0
    for b in range(bins):
        m=(conf>b/bins)&(conf<=(b+1)/bins)
        if m.any(): e+=m.mean()*abs(ok[m].mean()-conf[m].mean())
    return e
def fitT(logp,t):
    best=(1e9,1)
    for T in np.exp(np.linspace(-3,3,121)):
        p=softmax(logp,T); nll=-np.log(p[np.arange(len(t)),t]+1e-12).mean()
        best=min(best,(nll,T))
    return best[1]
def evaluate(make, name, viewsel=None, balance=True):
    t0=time.time()
    outs=[];truth=[];srcs=[]
    for s in sorted(set(src[~syn])):
        trm=(src[rex]!=s)
        if viewsel is not None: trm&=viewsel
        trained=set(y[rex[trm]])
        test=np.where((src==s)&has&np.isin(y,list(trained)))[0]
        if len(test)==0: continue
        sel=np.where(trm)[0]
        score=make(X[sel], y[rex[sel]], weights(sel) if balance else np.ones(len(sel)))
        outs.append(score(P[test])); truth.append(y[test]); srcs.append(s)
    # cross-fitted temperature
    probs=[]
    for k in range(len(outs)):
        ol=np.concatenate([o for j,o in enumerate(outs) if j!=k]); ot=np.concatenate([t for j,t in enumerate(truth) if j!=k])
        probs.append(softmax(outs[k],fitT(ol,ot)))
    p=np.concatenate(probs); t=np.concatenate(truth)
    pred=p.argmax(1)
    acc=[(pred[t==c]==c).mean() for c in range(len(labels)) if (t==c).any()]
    per={labels[c]:round((pred[t==c]==c).mean(),3) for c in range(len(labels)) if (t==c).any()}
    print(f"{name:40s} macro={np.mean(acc):.4f} acc={(pred==t).mean():.4f} ece={ece(p,t):.4f} n={len(t)} {time.time()-t0:.0f}s", per, flush=True)
    return p,t
def knn(k):
    def make(Xt,yt,w):
        def score(Z):
            s=Z@Xt.T; nn=np.argpartition(-s,k,axis=1)[:,:k]
            out=np.full((len(Z),len(labels)),1e-3)
            for i in range(len(Z)):
                for j in nn[i]: out[i,yt[j]]+=w[j]*np.exp(s[i,j]*10)
            return np.log(out/out.sum(1,keepdims=True))
        return score
    return make
def linear(C=0.1):
    """Multinomial logistic regression, as `coe router train --alpha 10` fits it (sklearn's C = 1/alpha)."""
    def make(Xt,yt,w):
        from sklearn.linear_model import LogisticRegression
        clf=LogisticRegression(C=C,max_iter=2000).fit(Xt,yt,sample_weight=w/w.mean())
        def score(Z):
            out=np.full((len(Z),len(labels)),-30.0)
            out[:,clf.classes_]=clf.predict_log_proba(Z)
            return out
        return score
    return make
def ensemble(makes, weights_=None):
    """The weighted sum of the members' log-probabilities (a product of experts)."""
    def make(Xt,yt,w):
        scores=[m(Xt,yt,w) for m in makes]
        def score(Z):
            return sum(wt*sc(Z) for wt,sc in zip(weights_ or [1.0]*len(makes),scores))
        return score
    return make
if __name__ == "__main__" and LLM_WRITTEN:
    evaluate(linear(), "linear C=0.1 views balance (+llm written)")
    evaluate(knn(30), "knn30 views balance (+llm written)")
    evaluate(knn(30), "knn30 prompt-only balance (+llm written)", viewsel=(rview == 0))
    evaluate(ensemble([linear(), knn(30)]), "linear + knn30 (+llm written)")
    evaluate(ensemble([linear(), knn(30)],[1.0,0.5]), "linear + 0.5 knn30 (+llm written)")
    sys.exit(0)
if __name__ == "__main__":
    evaluate(knn(10), "knn10 views balance")
    evaluate(knn(30), "knn30 views balance")
    evaluate(knn(10), "knn10 prompt-only balance", viewsel=(rview == 0))
    evaluate(knn(30), "knn30 prompt-only balance", viewsel=(rview == 0))
    evaluate(knn(10), "knn10 views no-balance", balance=False)
