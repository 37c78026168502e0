//! Times forward and backward of one training micro-batch on the default model (a profiling aid).
use candle_core::{DType, Device, Tensor};
use std::time::Instant;
use tsd::model::Llama;
use tsd::nn::ForwardCtx;

fn main() -> anyhow::Result<()> {
    let path = tsd::provision::default_model(false)?;
    let src = tsd::weights::GgufModel::open(&path)?;
    let t = Instant::now();
    let mut model = Llama::from_source(&src, &Device::Cpu, DType::F32)?;
    println!("load {:.2}s", t.elapsed().as_secs_f64());
    let lora = std::env::args().nth(1).as_deref() == Some("lora");
    if lora {
        for (i, l) in model.linears_mut().enumerate() {
            if ["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"]
                .iter()
                .any(|m| l.module.ends_with(m))
            {
                l.add_lora(4, 8.0, false, i as u64)?;
            }
        }
    }
    let (b, tt) = (2usize, 128usize);
    let ids: Vec<u32> = (0..b * tt).map(|i| (i * 37 % 40000) as u32).collect();
    let ids = Tensor::from_vec(ids, (b, tt), &Device::Cpu)?;
    for rep in 0..3 {
        let ctx = ForwardCtx::train(0.05, rep);
        let t = Instant::now();
        let h = model.final_hidden(&model.embed(&ids)?, 0, &ctx)?;
        let t_body = t.elapsed().as_secs_f64();
        let logits = model.logits(&h.reshape((b * tt, 576))?)?;
        let loss = candle_nn::ops::log_softmax(&logits, 1)?.mean_all()?;
        let t_fwd = t.elapsed().as_secs_f64();
        if lora {
            let _g = loss.backward()?;
        }
        let t_all = t.elapsed().as_secs_f64();
        println!(
            "rep {rep}: body {t_body:.3}s fwd {t_fwd:.3}s fwd+bwd {t_all:.3}s ({:.0} tok/s)",
            (b * tt) as f64 / t_all
        );
    }
    Ok(())
}
